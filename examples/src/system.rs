//! What the process and the machine are: resident memory, CPU model, core count. Read from
//! Linux's `/proc`; `None` elsewhere.

/// The process's peak resident memory in bytes (`VmHWM`), if the system says.
pub fn peak_resident_bytes() -> Option<u64> {
    status_kilobytes("VmHWM:").map(|kilobytes| kilobytes * 1024)
}

/// The process's resident memory now in bytes (`VmRSS`), if the system says.
pub fn resident_bytes() -> Option<u64> {
    status_kilobytes("VmRSS:").map(|kilobytes| kilobytes * 1024)
}

/// The anonymous resident memory of process `pid` in bytes (`RssAnon`: its heap and other
/// private memory, not the files it maps), if the system says.
pub fn anonymous_resident_bytes(pid: u32) -> Option<u64> {
    kilobytes_in(&format!("/proc/{pid}/status"), "RssAnon:").map(|kilobytes| kilobytes * 1024)
}

fn status_kilobytes(field: &str) -> Option<u64> {
    kilobytes_in("/proc/self/status", field)
}

fn kilobytes_in(status: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// The CPU's model name and the number of cores this process may use.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    format!("{model}, {cores} cores")
}
