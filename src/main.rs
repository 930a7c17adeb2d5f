fn main() {
    std::process::exit(mirrorfs::cli::run());
}
