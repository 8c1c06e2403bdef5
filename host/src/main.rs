//! The `keel` binary: see [`keel_host::cli`].

// Posting allocates many small short-lived values (parsed entries, bind arguments, JSON);
// mimalloc handles that pattern markedly better than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keel_host::cli::main()
}
