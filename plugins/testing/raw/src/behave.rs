//! The misbehaviours shared by the raw tier policy and the raw gate: the
//! config is the name of one, and every export acts it out.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

static MODE: Mutex<String> = Mutex::new(String::new());

pub(crate) fn mode() -> String {
    MODE.lock().map(|m| m.clone()).unwrap_or_default()
}

pub(crate) fn set_mode(config: String) -> Result<(), String> {
    // The config is a JSON object; this crate has no JSON parser, so it
    // takes the value of `"mode"` by hand.
    let mode = config.split("\"mode\"").nth(1).and_then(|rest| rest.split('"').nth(1)).unwrap_or("well-behaved").to_owned();
    behave(&mode, "configure");
    if let Ok(mut slot) = MODE.lock() {
        *slot = mode;
    }
    Ok(())
}

/// Misbehaves according to `mode`, in export `export`.
pub(crate) fn behave(mode: &str, export: &str) {
    match mode {
        "print" => {
            println!("stdout from {export}\nsecond line");
            eprintln!("stderr from {export}");
        }
        "print-flood" => {
            for i in 0..100_000 {
                println!("line {i} of a flood from {export}");
            }
        }
        "panic" if export != "configure" => panic!("raw policy panics in {export}"),
        "stdin" => {
            let mut input = String::new();
            let _ = std::io::stdin().read_to_string(&mut input);
            println!("read {} bytes of stdin", input.len());
        }
        "sleep" if export != "configure" => std::thread::sleep(Duration::from_secs(3600)),
        "sleep-configure" => std::thread::sleep(Duration::from_secs(3600)),
        // Just under a second per call: under a longer deadline the tier is
        // never disabled, so only a stop request cuts a cycle short.
        "nap" if export == "select-candidates" => std::thread::sleep(Duration::from_millis(900)),
        "loop" if export != "configure" => loop {
            std::hint::black_box(());
        },
        _ => {}
    }
}
