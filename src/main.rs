fn main() {
    std::process::exit(mirrorfs::commands::run());
}
