fn main() {
    std::process::exit(multiwan::cli::main());
}
