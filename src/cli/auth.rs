//! `posthorn auth add USER`: writes a user's Argon2id hash into the
//! AUTH users file (`auth.users`, or `--file`). The password is the first
//! line of standard input, so it never shows in the process list:
//! `echo 's3cret' | posthorn auth add alice`. The daemon reads the file at
//! start and on `posthorn reload`.

use super::{exit, load_config};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub(crate) enum Verb {
    /// Add USER, or replace their password; the password is read from stdin
    Add {
        user: String,
        /// The users file (default: auth.users from the configuration)
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

pub(crate) fn main(explicit: Option<&Path>, verb: Verb) -> u8 {
    let Verb::Add { user, file } = verb;
    let file = match file {
        Some(f) => f,
        None => match load_config(explicit, "posthorn").map(|c| c.auth.users) {
            Ok(Some(f)) => f,
            Ok(None) => {
                eprintln!("posthorn: auth.users is not set in the configuration; give --file");
                return exit::USAGE;
            }
            Err(code) => return code,
        },
    };
    if let Err(e) = crate::auth::check_user(&user) {
        eprintln!("posthorn: {e}");
        return exit::USAGE;
    }
    let mut password = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut password) {
        eprintln!("posthorn: cannot read the password from standard input: {e}");
        return exit::USAGE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("posthorn: empty password (give it on standard input)");
        return exit::USAGE;
    }
    match crate::auth::set_password(&file, &user, password.as_bytes()) {
        Ok(()) => {
            println!("{user}: password set in {}", file.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("posthorn: {e}");
            exit::CANTCREAT
        }
    }
}
