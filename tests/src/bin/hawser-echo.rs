//! `hawser-echo`: the lab's echo backend (`serve`) and its client (`client`).
//! See [`hawser_tests::echo`].

fn main() -> std::process::ExitCode {
    hawser_tests::echo::cli::main()
}
