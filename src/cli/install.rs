//! `posthorn install-links DIR`: symlinks named `sendmail`, `mailq`,
//! `postqueue`, `postsuper`, `postcat`, `postconf`, `postfix`, `postmap`,
//! `exim`, `exim4` (Debian's name), `exiqgrep` and `newaliases`, all pointing at this binary, which picks its behaviour by
//! the name it is called with. An existing file of the same name is left
//! alone (and reported) unless `--force`; an existing link to this binary
//! is fine.

use super::{COMPAT_NAMES, exit};
use std::path::Path;

pub(crate) fn main(dir: &Path, force: bool) -> u8 {
    let exe = match std::env::current_exe().and_then(std::fs::canonicalize) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("posthorn install-links: fatal: cannot find this binary: {e}");
            return exit::SOFTWARE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("posthorn install-links: fatal: {}: {e}", dir.display());
        return exit::CANTCREAT;
    }
    let mut code = exit::OK;
    for name in COMPAT_NAMES {
        let link = dir.join(name);
        if let Ok(meta) = std::fs::symlink_metadata(&link) {
            let same = meta.file_type().is_symlink() && std::fs::canonicalize(&link).is_ok_and(|t| t == exe);
            if same {
                println!("{}: already a link to {}", link.display(), exe.display());
                continue;
            }
            if !force {
                eprintln!("posthorn install-links: {} exists; left alone (use --force to replace it)", link.display());
                code = 1;
                continue;
            }
            if let Err(e) = std::fs::remove_file(&link) {
                eprintln!("posthorn install-links: cannot replace {}: {e}", link.display());
                code = exit::CANTCREAT;
                continue;
            }
        }
        match std::os::unix::fs::symlink(&exe, &link) {
            Ok(()) => println!("{} -> {}", link.display(), exe.display()),
            Err(e) => {
                eprintln!("posthorn install-links: cannot create {}: {e}", link.display());
                code = exit::CANTCREAT;
            }
        }
    }
    code
}
