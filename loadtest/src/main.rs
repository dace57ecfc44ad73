//! `hanmadi-loadtest`: drives many real connections against a Hanmadi server.

fn main() {
    eprintln!("hanmadi-loadtest: not implemented yet");
    std::process::exit(2);
}
