//! The user Weir serves as: `[server] user` looked up by name ([`lookup`], once, when the
//! config is loaded, so `weir check` refuses a user that does not exist), and the process
//! dropped to it ([`drop_to`]): supplementary groups cleared, then the group, then the
//! user. Started as root, Weir binds its listeners first (ports below 1024 need root or
//! CAP_NET_BIND_SERVICE), then drops, then starts its workers, so no request is ever
//! served as root.
//!
//! Owns: [`User`], the passwd lookup, the order of the calls and the check that they took.
//! Must not: run once a worker thread exists (a worker must never serve with the old
//! credentials, even for a moment), or be reached by a reload (privileges once dropped do
//! not come back; a reload that changes `user` says it takes effect at the next start).

use std::ffi::CString;
use std::io;

/// A user as the system knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// The user's primary group, which becomes the process's group.
    pub gid: u32,
}

/// The user called `name` in the system's user database (/etc/passwd, or whatever NSS
/// serves): `Ok(None)` when there is none.
pub fn lookup(name: &str) -> Result<Option<User>, String> {
    let c_name = CString::new(name).map_err(|_| "a user name has no NUL byte".to_string())?;
    // SAFETY: sysconf only reads a configuration value.
    let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
    let mut size = usize::try_from(hint)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(4096);
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the strings getpwnam_r leaves in
        // `entry` point into `buf`, which is not read after it is dropped.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => {
                return Ok(Some(User {
                    name: name.to_string(),
                    uid: entry.pw_uid,
                    gid: entry.pw_gid,
                }))
            }
            // A long entry (many fields, long paths): try again with room for it.
            libc::ERANGE if size < 1 << 20 => size *= 2,
            // getpwnam_r(3) lists these as other ways of saying "not found".
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e).to_string()),
        }
    }
}

/// Makes `user` the process's user and group, with no supplementary groups: true when
/// the credentials changed. Already that user (started by systemd's `User=`, say): nothing
/// to do, false. Another user and not root: an error that says what to do instead. Call
/// it with a single thread running (see the module's header): glibc would carry the
/// change to every thread, but a worker must not get the chance to serve before it.
pub fn drop_to(user: &User) -> Result<bool, String> {
    // SAFETY: these only read the process's credentials.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if uid == user.uid && euid == user.uid {
        return Ok(false);
    }
    if euid != 0 {
        return Err(format!(
            "[server] user = \"{}\": Weir runs as uid {euid}, not root, so it cannot become \
             `{}` (uid {}); start it as root (it drops to `{}` once its listeners are bound), \
             or remove `user` to serve as uid {euid}",
            user.name, user.name, user.uid, user.name
        ));
    }
    let failed = |call: &str| {
        format!(
            "[server] user = \"{}\": {call} failed: {}",
            user.name,
            io::Error::last_os_error()
        )
    };
    // Groups before the user: once the user is not root, the groups cannot change.
    // SAFETY: setgroups with a count of 0 reads no list; setgid and setuid take integers.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(failed("setgroups([])"));
        }
        if libc::setgid(user.gid) != 0 {
            return Err(failed(&format!("setgid({})", user.gid)));
        }
        if libc::setuid(user.uid) != 0 {
            return Err(failed(&format!("setuid({})", user.uid)));
        }
    }
    // Trust but verify: every id moved (real, effective; setuid as root sets the saved
    // one too), and root cannot be taken back.
    // SAFETY: these only read the process's credentials.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if (uid, euid, gid, egid) != (user.uid, user.uid, user.gid, user.gid) {
        return Err(format!(
            "[server] user = \"{}\": after dropping, the process runs as uid {uid}/{euid}, \
             gid {gid}/{egid}, not uid {} gid {}",
            user.name, user.uid, user.gid
        ));
    }
    // SAFETY: setuid takes an integer; it fails, as it must, for a user that is not root.
    if user.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(format!(
            "[server] user = \"{}\": root could be taken back after dropping to it",
            user.name
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_root_and_not_a_made_up_name() {
        let root = lookup("root")
            .unwrap()
            .expect("every Linux system has root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("weir-no-such-user-here").unwrap(), None);
        assert_eq!(lookup("").unwrap(), None);
        assert!(lookup("a\0b").is_err());
    }

    #[test]
    fn dropping_to_the_user_already_running_changes_nothing() {
        // SAFETY: reads the process's credentials.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let me = User {
            name: "me".into(),
            uid,
            gid,
        };
        // The test process's real and effective uid are the same, so this is a no-op and
        // never touches the credentials of the other tests' threads.
        assert_eq!(drop_to(&me), Ok(false));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::geteuid() }, uid);
    }
}
