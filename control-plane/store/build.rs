// `sqlx::migrate!` embeds the migration files at compile time; Cargo does not
// know about them, so a new or edited migration alone would not rebuild the
// crate without this.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
