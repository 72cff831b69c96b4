//! The command line, as clap derive structs. Their doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Carnet: clinicians' notes, encrypted at rest with a key per patient.
///
/// Everything Carnet writes to the vault directory is ciphertext: patient identifiers, names,
/// dates, authors and note bodies included. Every stored byte is authenticated, so a damaged,
/// moved or deleted record is reported (exit 5), never shown.
///
/// Exit codes: 0 success, 1 failure, 2 usage error, 3 authentication failed, 4 no such
/// patient or note, 5 integrity failure, 6 vault in use, 7 not permitted.
///
/// The complete reference (every command, option, exit code and JSON shape) is docs/cli.md in
/// Carnet's source; `carnet man` prints the manual page.
#[derive(Parser)]
#[command(
    name = "carnet",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Examples:\n  carnet demo\n  carnet init\n  carnet patient add FR-0042 --name 'Camille Martin' --birth-date 1984-02-29\n  echo 'Follow-up in 3 weeks.' | carnet note add FR-0042 --author 'Dr Leroy'\n  carnet note list FR-0042\n  carnet verify"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after any subcommand.
#[derive(Args)]
pub struct Global {
    /// The vault: a directory, or a PostgreSQL URI naming the vault in its database
    /// (postgresql://USER@HOST/DB?vault=NAME, libpq's syntax, sslmode honoured; the password
    /// comes from ~/.pgpass, PGPASSFILE or --db-password-file, never from the URI) [default:
    /// $XDG_DATA_HOME/carnet, else ~/.local/share/carnet]
    #[arg(long, global = true, env = "CARNET_VAULT", value_name = "DIR|URI")]
    pub vault: Option<PathBuf>,
    /// Read the PostgreSQL password from the first line of FILE (private to you) instead of
    /// ~/.pgpass or PGPASSFILE
    #[arg(
        long,
        global = true,
        env = "CARNET_DB_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub db_password_file: Option<PathBuf>,
    /// Read the passphrase from the first line of FILE, instead of asking on the terminal
    #[arg(
        long,
        global = true,
        env = "CARNET_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Unlock with the recovery key in FILE instead of a passphrase (no passphrase is read)
    #[arg(long, global = true, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
    /// Whose key slot unlocks the vault
    #[arg(
        long,
        global = true,
        env = "CARNET_USER",
        value_name = "NAME",
        default_value = "admin"
    )]
    pub user: String,
    /// Machine-readable output: one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// How long to wait, in seconds, for another carnet command that holds the vault (sled
    /// admits one process at a time) before giving up with exit 6
    #[arg(
        long,
        global = true,
        env = "CARNET_WAIT",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub wait: u64,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new vault, protected by a passphrase (at least 12 characters)
    ///
    /// The passphrase comes from --passphrase-file, or is asked twice on the terminal. The key
    /// derivation defaults to Argon2id with 64 MiB, 3 passes and 4 lanes (RFC 9106); lower
    /// settings are accepted down to 8 MiB / 1 / 1 for weak hardware and tests, with a warning.
    #[command(after_help = "Example:\n  carnet --vault /srv/carnet init")]
    Init(InitArgs),
    /// Register, list and show patients
    #[command(
        subcommand,
        after_help = "Examples:\n  carnet patient add FR-0042 --name \"Camille Martin\" --birth-date 1984-02-29\n  carnet patient list --json"
    )]
    Patient(PatientCommand),
    /// Add, list, show and amend notes
    #[command(
        subcommand,
        after_help = "Examples:\n  carnet note add FR-0042 --file consult.txt\n  carnet note list FR-0042"
    )]
    Note(NoteCommand),
    /// Key status, rotation and passphrase change
    #[command(
        subcommand,
        after_help = "Examples:\n  carnet key status\n  carnet key rotate-master"
    )]
    Key(KeyCommand),
    /// Add, list and remove users (each with an own passphrase and a role)
    #[command(
        subcommand,
        after_help = "Examples:\n  carnet user add dr.leroy --role clinician\n  carnet user list"
    )]
    User(UserCommand),
    /// Bulk-import notes from a JSON Lines file
    ///
    /// One JSON object per line: {"patient_id": "...", "name"?: "...", "birth_date"?:
    /// "YYYY-MM-DD", "author"?: "...", "kind"?: "...", "created_at"?: RFC 3339, "body": "..."}.
    /// Patients are created as needed (name and birth_date are used when a line creates its
    /// patient). Blank lines are skipped.
    ///
    /// Every line is checked before anything is written: if any line is rejected, each
    /// rejected line is reported on stderr with its line number, nothing is imported, and the
    /// command exits 1. Notes are then written in atomic batches of up to 1,000. If the import
    /// is interrupted (power cut, kill), the batches written stay, whole, and running the same
    /// command on the same, unchanged file resumes after them: no note is imported twice.
    /// Importing a file that was already imported completely does nothing (say so with --again
    /// to import it once more).
    #[command(after_help = "Example:\n  carnet import notes.jsonl")]
    Import(ImportArgs),
    /// One patient's whole record, every note version, as JSON on stdout
    ///
    /// For the patient's right of access, or a move to another system. The output is plaintext:
    /// send it only where it may go. Requires the clinician (or admin) role; logged.
    #[command(after_help = "Example:\n  carnet export FR-0042 > FR-0042.json")]
    Export {
        /// The patient's identifier
        id: String,
    },
    /// Find notes whose current text contains TEXT (ignoring case)
    ///
    /// Decrypts and scans every note (or one patient's). Prints one line per hit: patient id,
    /// note id, and a snippet around the match.
    #[command(after_help = "Example:\n  carnet search 'penicillin' --patient FR-0042")]
    Search(SearchArgs),
    /// Decrypt and authenticate every record and every link between records
    ///
    /// Reports every problem found and goes on; exits 5 if it found any.
    #[command(
        after_help = "Examples:\n  carnet verify --json\n  carnet verify --checkpoint /media/usb/carnet-checkpoint.txt"
    )]
    Verify(VerifyArgs),
    /// The access log: who read or changed which record, decrypted, oldest first
    ///
    /// For administrators and auditors; this is the report a patient may ask for ("who read my
    /// record"). Reading it is itself logged. `carnet audit checkpoint` prints the log's head, to
    /// keep off the server; `carnet verify --checkpoint FILE` later proves the vault still
    /// contains it (no rollback to an older copy).
    #[command(
        after_help = "Examples:\n  carnet audit --patient FR-0042 --json\n  carnet audit --user dr.leroy --since 2026-11-01T00:00:00Z\n  carnet audit checkpoint > /media/usb/carnet-checkpoint.txt"
    )]
    Audit(AuditArgs),
    /// Write a self-verifying archive of the whole vault (ciphertext only) to FILE
    ///
    /// Needs no passphrase: the archive holds exactly the stored bytes, so a nightly job can
    /// make it. Every part carries a checksum, so a damaged archive is refused before anything is
    /// restored. The archive does not depend on the storage engine. FILE must not exist.
    #[command(after_help = "Example:\n  carnet backup /media/backup/carnet-$(date +%F).carnet")]
    Backup {
        /// The archive to create
        file: PathBuf,
    },
    /// Restore an archive into --vault DIR, which must be absent or empty
    ///
    /// The whole archive is checked first; nothing is written if any part is damaged. Then run
    /// `carnet verify`. Restoring an old backup brings back patients erased since.
    #[command(
        after_help = "Example:\n  carnet --vault /srv/carnet-restored restore /media/backup/carnet-2026-11-29.carnet"
    )]
    Restore {
        /// The archive to restore
        file: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Example:\n  carnet completions bash > /etc/bash_completion.d/carnet")]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these definitions
    #[command(after_help = "Example:\n  carnet man > /usr/local/share/man/man1/carnet.1")]
    Man,
    /// Serve the vault over HTTPS to desks and to other programs (docs/api.md)
    ///
    /// Needs no passphrase: each clinician logs in with their own (POST /v1/sessions) and the
    /// server holds a vault's keys only while someone is logged in. Without --tls-cert, a
    /// certificate is made on first start and kept (private) in the state directory; its
    /// SHA-256 fingerprint is printed so that desks can pin it. SIGTERM or Ctrl-C stops it
    /// gracefully: requests under way finish, every key is dropped, exit 0.
    #[command(after_help = "Examples:
  carnet --vault /srv/carnet serve
  carnet --vault /srv/carnet serve --listen 192.168.1.10:8443 --tls-cert cert.pem --tls-key key.pem
  carnet --vault /srv/carnet serve --listen 127.0.0.1:8080 --insecure-http   # behind a local TLS proxy")]
    Serve(ServeArgs),
    /// Build a demo vault with synthetic patients, read it back, verify it, and show that its
    /// files hold no plaintext
    #[command(after_help = "Example:\n  carnet demo --dir /tmp/carnet-demo")]
    Demo(DemoArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// The address and port to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// The certificate chain to serve (PEM); with --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); with --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP, without TLS: only on a loopback address (behind a TLS proxy on this machine)
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_http: bool,
    /// Minutes a session may stay unused before it ends
    #[arg(long, value_name = "MIN", default_value_t = 15)]
    pub idle_minutes: u64,
    /// Hours after login a session ends, used or not
    #[arg(long, value_name = "H", default_value_t = 12)]
    pub session_hours: u64,
    /// Seconds a session may stay unused (overrides --idle-minutes; for tests)
    #[arg(long, value_name = "S", hide = true)]
    pub idle_seconds: Option<u64>,
    /// Logins unlocking at once (each takes the vault's Argon2id memory, 64 MiB by default)
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub concurrent_logins: usize,
    /// The reverse proxy (its address) whose X-Forwarded-For names the client
    #[arg(long, value_name = "ADDR")]
    pub trust_proxy: Option<std::net::IpAddr>,
    /// Append the server's notes (logins, failed logins) to FILE instead of stderr
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    /// Argon2id memory in MiB (8 to 1024)
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub kdf_memory_mib: u32,
    /// Argon2id passes (1 to 16)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub kdf_iterations: u32,
    /// Argon2id lanes (1 to 16)
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub kdf_parallelism: u32,
    /// Name of the first user, whose passphrase this is
    #[arg(long, value_name = "NAME", default_value = "admin")]
    pub admin: String,
    /// Write the recovery key to FILE instead of printing it
    #[arg(long, value_name = "FILE")]
    pub recovery_key_out: Option<PathBuf>,
    /// PostgreSQL only: create Carnet's tables in the database (or check them), and no vault
    /// (the vault=NAME of --vault is not created). For the role that is to own the tables,
    /// before clinics' roles are granted their rows (docs/postgresql-hosting.md)
    #[arg(long)]
    pub tables_only: bool,
}

#[derive(Subcommand)]
pub enum PatientCommand {
    /// Register a patient (ID: any text of 1 to 256 bytes)
    #[command(
        after_help = "Example:\n  carnet patient add FR-0042 --name 'Camille Martin' --birth-date 1984-02-29"
    )]
    Add {
        /// The patient's identifier
        id: String,
        /// Full name
        #[arg(long)]
        name: Option<String>,
        /// Date of birth, YYYY-MM-DD
        #[arg(long, value_name = "YYYY-MM-DD")]
        birth_date: Option<String>,
    },
    /// List every patient, in the order they were registered
    #[command(after_help = "Example:\n  carnet patient list --json")]
    List,
    /// Show one patient
    #[command(after_help = "Example:\n  carnet patient show FR-0042")]
    Show {
        /// The patient's identifier
        id: String,
    },
    /// Crypto-shred a patient: destroy their keys and every record, irreversibly
    ///
    /// For the end of a retention period or a lawful erasure. The vault's record store is
    /// rewritten without the patient and swapped in, and the patient's keys are destroyed, so
    /// no copy of the vault directory taken afterwards can recover them, with any passphrase.
    /// Backups taken before still hold the patient: restoring one brings the patient back.
    /// Takes time proportional to the size of the vault. If interrupted, run it again.
    #[command(after_help = "Example:\n  carnet patient erase FR-0042 --yes")]
    Erase {
        /// The patient's identifier
        id: String,
        /// Confirm: the erasure cannot be undone
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user with their own passphrase (administrators)
    ///
    /// Roles: clinician (patients, notes, import, search), auditor (the access log only), admin
    /// (everything a clinician does, plus users and keys). Nothing is re-encrypted. The new
    /// user's passphrase comes from --new-passphrase-file, else is asked twice on the terminal.
    #[command(after_help = "Example:\n  carnet user add dr.leroy --role clinician")]
    Add {
        /// The new user's name (what they pass to --user)
        name: String,
        /// What the user may do
        #[arg(long, default_value = "clinician", value_parser = ["admin", "clinician", "auditor"])]
        role: String,
        /// Read the new user's passphrase from the first line of FILE
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// List users and their roles
    #[command(after_help = "Example:\n  carnet user list --json")]
    List,
    /// Revoke a user: their slot goes, the master key rotates, every patient gets a new key
    ///
    /// A copy of the vault taken before, with the removed user's passphrase, opens nothing
    /// written afterwards. Notes already written are not re-encrypted (the user could read them
    /// before). Removing an administrator also replaces the recovery key (they may have kept
    /// it): the new one is printed, or written to --recovery-key-out. If interrupted, run it
    /// again.
    #[command(
        after_help = "Examples:\n  carnet user remove dr.leroy\n  carnet user remove ancien.admin --recovery-key-out /media/usb/carnet-recovery.txt"
    )]
    Remove {
        /// The user to revoke
        name: String,
        /// Write the new recovery key (when an administrator is removed) to FILE instead of
        /// printing it
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Show key versions, KDF settings, and any rotation left unfinished
    #[command(after_help = "Example:\n  carnet key status --json")]
    Status,
    /// Rotate the master key: new epoch, every wrapped key re-wrapped, no note rewritten
    ///
    /// Cost grows with the number of patients, not notes. Crash-safe: if interrupted, every
    /// note still opens, and running the command again finishes the rotation.
    #[command(
        after_help = "Example:\n  carnet key rotate-master --plan\n  carnet key rotate-master"
    )]
    RotateMaster {
        /// Print the work the rotation would do, and change nothing
        #[arg(long)]
        plan: bool,
    },
    /// Rotate patient keys: every note version re-encrypted under a new key version
    ///
    /// The old key version is destroyed once nothing uses it. Crash-safe: if interrupted,
    /// every note still opens, and running the same command again finishes the job.
    #[command(
        after_help = "Examples:\n  carnet key rotate-patient FR-0042\n  carnet key rotate-patient --all --plan"
    )]
    RotatePatient {
        /// The patient whose key to rotate
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Rotate every patient's key
        #[arg(long)]
        all: bool,
        /// Print the work the rotation would do, and change nothing
        #[arg(long)]
        plan: bool,
    },
    /// Replace the recovery key; the old one stops working
    ///
    /// The new key is printed once (or written to --recovery-key-out): write it down and keep
    /// it in the safe. With it, `--recovery-key-file` opens the vault when every passphrase is
    /// lost.
    #[command(
        after_help = "Example:\n  carnet key rotate-recovery --recovery-key-out /media/usb/carnet-recovery.txt"
    )]
    RotateRecovery {
        /// Write the new recovery key to FILE instead of printing it
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// Upgrade a format-1 vault to format 2 (administrators)
    ///
    /// Format 2 closes what someone who can write the storage could do to format 1: inject a
    /// master key of their own, roll one patient back behind a whole access log, replay an
    /// older users record. Crash-safe: if interrupted, run it again. Your slot is upgraded at
    /// once; each other user's at their next unlock (`carnet key status` counts those left).
    /// An older Carnet no longer opens the vault afterwards (it says "newer format").
    #[command(after_help = "Example:\n  carnet key upgrade")]
    Upgrade,
    /// Protect your key slot with a new passphrase; the old one stops working
    ///
    /// The new passphrase comes from --new-passphrase-file, else is asked twice on the terminal.
    /// A passphrase change revokes the old passphrase: the master key rotates and every patient
    /// gets a new key, so that an old copy of the vault's key files, opened with the old
    /// passphrase, opens nothing written afterwards. The --kdf-* options raise (or set) the
    /// Argon2id cost of your slot at the same time. If interrupted, run it again.
    #[command(
        after_help = "Examples:\n  carnet key change-passphrase\n  carnet key change-passphrase --kdf-memory-mib 256 --kdf-iterations 4"
    )]
    ChangePassphrase {
        /// Read the new passphrase from the first line of FILE
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        /// New Argon2id memory in MiB (8 to 1024); default: the slot's current setting
        #[arg(long, value_name = "N")]
        kdf_memory_mib: Option<u32>,
        /// New Argon2id passes (1 to 16); default: the slot's current setting
        #[arg(long, value_name = "N")]
        kdf_iterations: Option<u32>,
        /// New Argon2id lanes (1 to 16); default: the slot's current setting
        #[arg(long, value_name = "N")]
        kdf_parallelism: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum NoteCommand {
    /// Store a note; prints its id once it is safely on disk
    ///
    /// The body is read from --file, else from standard input: any bytes, up to 16 MiB.
    #[command(
        after_help = "Examples:\n  carnet note add FR-0042 --file consult.txt --author 'Dr Leroy' --kind consultation\n  echo 'Allergic to penicillin.' | carnet note add FR-0042"
    )]
    Add {
        /// The patient's identifier
        id: String,
        /// Read the body from FILE instead of standard input
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Who wrote it
        #[arg(long)]
        author: Option<String>,
        /// What kind of note (consultation, prescription, lab...)
        #[arg(long)]
        kind: Option<String>,
    },
    /// List a patient's notes (current versions), in the order they were added
    #[command(after_help = "Example:\n  carnet note list FR-0042")]
    List {
        /// The patient's identifier
        id: String,
    },
    /// Print a note's current body, byte for byte
    #[command(
        after_help = "Example:\n  carnet note show FR-0042 0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    )]
    Show {
        /// The patient's identifier
        id: String,
        /// The note's id (32 hex digits, as printed by `note add` and `note list`)
        note_id: String,
    },
    /// Add a new version of a note; earlier versions stay readable
    #[command(
        after_help = "Example:\n  carnet note amend FR-0042 0f1e2d3c4b5a69788796a5b4c3d2e1f0 --file corrected.txt"
    )]
    Amend {
        /// The patient's identifier
        id: String,
        /// The note's id
        note_id: String,
        /// Read the new body from FILE instead of standard input
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Who wrote this version [default: the previous version's author]
        #[arg(long)]
        author: Option<String>,
    },
    /// Print every version of a note, oldest first
    #[command(
        after_help = "Example:\n  carnet note history FR-0042 0f1e2d3c4b5a69788796a5b4c3d2e1f0 --json"
    )]
    History {
        /// The patient's identifier
        id: String,
        /// The note's id
        note_id: String,
    },
}

#[derive(Args)]
pub struct ImportArgs {
    /// The JSON Lines file
    pub file: PathBuf,
    /// Import the file even if this exact file was already imported completely
    #[arg(long)]
    pub again: bool,
}

#[derive(Args)]
pub struct SearchArgs {
    /// The text to look for
    pub text: String,
    /// Search only this patient's notes
    #[arg(long, value_name = "ID")]
    pub patient: Option<String>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Also check that the access log still contains this checkpoint (from `audit checkpoint`)
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only entries about this patient
    #[arg(long, value_name = "ID")]
    pub patient: Option<String>,
    /// Only entries by this user (after `audit`, `--user NAME` means this filter; the user who
    /// unlocks is then given before `audit`, or by CARNET_USER)
    #[arg(long = "user-filter", value_name = "NAME")]
    pub by: Option<String>,
    /// Only entries at or after this time (RFC 3339)
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<String>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print the head of the access log (one line), to keep off the server
    ///
    /// Keep the line somewhere the server cannot reach (paper, a USB key, an e-mail to
    /// yourself); `carnet verify --checkpoint FILE` later proves that the vault still contains
    /// every entry up to it. With --json: {"checkpoint": LINE, "entries": N, "head": HEX}.
    #[command(
        after_help = "Examples:\n  carnet audit checkpoint > /media/usb/carnet-checkpoint.txt\n  carnet verify --checkpoint /media/usb/carnet-checkpoint.txt"
    )]
    Checkpoint,
    /// Accept the vault as it is now, after putting it back to an older state on purpose
    ///
    /// Each machine remembers the newest state of the access log it saw of each vault at each
    /// place, and refuses (exit 5) a vault whose log does not extend it: an older copy put back,
    /// a truncated log. When that was deliberate (a database restored to a point in time, a
    /// vault copied back by hand), this command makes this machine remember the vault as it is
    /// now. `carnet restore` needs no such step. Administrators and auditors; logged.
    #[command(after_help = "Example:\n  carnet --vault /srv/carnet audit accept-rewind")]
    AcceptRewind,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where to build the demo vault (must be absent or empty) [default: a new temporary directory]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
