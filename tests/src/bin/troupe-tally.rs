//! Prints the suite's fault/hostile-input table (see `troupe_tests::tally`).
//! Exits 1 when any data was lost, a hostile input was not refused, or the
//! ledger has unreadable lines.

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(troupe_tests::tally::dir);
    let (entries, bad) = troupe_tests::tally::read_all(&dir);
    println!("Fault and hostile-input ledger ({}):", dir.display());
    print!("{}", troupe_tests::tally::table(&entries));
    let lost: u64 = entries.iter().map(|e| e.lost).sum();
    let unrefused = entries.iter().filter(|e| !e.held).count();
    if bad > 0 {
        eprintln!("troupe-tally: {bad} unreadable ledger line(s)");
    }
    if lost > 0 || unrefused > 0 || bad > 0 {
        std::process::exit(1);
    }
}
