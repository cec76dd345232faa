//! Build script of the event store: tells Cargo to rebuild the crate when the `migrations`
//! directory changes, since `sqlx::migrate!` embeds the migrations at compile time.

// `sqlx::migrate!` embeds the migrations at compile time; rebuild when one is added.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
