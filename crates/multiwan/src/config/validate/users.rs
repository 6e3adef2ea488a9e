//! `user = "<name>"` in rules: names resolve to uids through the system's user
//! database (NSS: /etc/passwd, LDAP, systemd-userdb, whatever nsswitch.conf says), the
//! way `id <name>` does, so a user that exists for the system exists for multiwan.

use serde_spanned::Spanned;

use super::Ctx;
use crate::config::raw::IntOrString;

/// Resolves a user name to a uid for rules with `user = "<name>"`.
pub(crate) trait Users {
    /// `Ok(None)`: no such user. `Err`: the user database could not be read.
    fn uid(&self, name: &str) -> Result<Option<u32>, String>;
}

/// The system's user database, through NSS (`getpwnam_r`). Asked only when a rule
/// names a user: most configs name none.
pub(crate) struct SystemUsers;

impl Users for SystemUsers {
    fn uid(&self, name: &str) -> Result<Option<u32>, String> {
        nix::unistd::User::from_name(name)
            .map(|user| user.map(|u| u.uid.as_raw()))
            .map_err(|e| format!("the user database could not be read ({e})"))
    }
}

impl Ctx<'_, '_> {
    pub(super) fn user(&mut self, v: &Spanned<IntOrString>, key: &str) -> Option<u32> {
        let name = match v.get_ref() {
            IntOrString::Int(n) => {
                // u32::MAX is (uid_t)-1, "no user"; the kernel never gives it to a socket.
                return match u32::try_from(*n).ok().filter(|u| *u != u32::MAX) {
                    Some(uid) => Some(uid),
                    None => {
                        self.error(
                            v.span(),
                            key,
                            format!("uid {n} is out of range 0..=4294967294"),
                        );
                        None
                    }
                };
            }
            IntOrString::String(s) => s,
        };
        if let Ok(uid) = name.parse::<u32>() {
            if uid != u32::MAX {
                return Some(uid);
            }
        }
        match self.users.uid(name) {
            Ok(Some(uid)) => Some(uid),
            Ok(None) => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "there is no user {name:?} in the user database; create it first or give a \
                         numeric uid"
                    ),
                );
                None
            }
            Err(e) => {
                self.error(
                    v.span(),
                    key,
                    format!("cannot resolve user {name:?}: {e}; give a numeric uid instead"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::validate::parse_with;

    #[test]
    fn root_resolves_through_nss() {
        assert_eq!(SystemUsers.uid("root"), Ok(Some(0)));
        assert_eq!(SystemUsers.uid("no-such-user-hopefully"), Ok(None));
    }

    struct OneUser;
    impl Users for OneUser {
        fn uid(&self, name: &str) -> Result<Option<u32>, String> {
            Ok((name == "openvpn").then_some(998))
        }
    }

    #[test]
    fn user_names_resolve_through_the_database() {
        let text = "[links.a]\nid = 1\ninterface = \"wan1\"\n\
                    [[rules]]\nuser = \"openvpn\"\npolicy = \"a\"\n\
                    [[rules]]\nuser = \"ghost\"\npolicy = \"a\"\n";
        let errs = parse_with(text, Path::new("t.toml"), &OneUser).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs}");
        assert_eq!(errs.0[0].key, "rules[2].user");
        assert_eq!(errs.0[0].line, 8);
    }
}
