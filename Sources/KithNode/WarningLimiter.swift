/// Decides which warnings of one kind reach the log, so that input nobody authenticated (garbage
/// or forged frames on the gossip port, say) cannot flood it: per reason, at most `burst` lines
/// per `interval`; the first line written after some were left out says how many. Every
/// occurrence is counted (the metrics show them all). A pure value: time comes in as an argument.
struct WarningLimiter: Sendable {
    enum Decision: Equatable, Sendable {
        /// Write the warning; `suppressed` more of its reason were left out since the last one written.
        case log(suppressed: Int)
        case suppress
    }

    let burst: Int
    let interval: Int64
    private var reasons: [String: Reason] = [:]

    private struct Reason {
        var total = 0
        /// Lines written in the current window, when it began, and those left out since the last line.
        var written = 0
        var windowStart: Int64
        var suppressed = 0
    }

    init(burst: Int = 5, interval: Int64 = 60_000) {
        precondition(burst >= 1 && interval > 0, "a limiter needs a burst of at least 1 and a positive interval")
        self.burst = burst
        self.interval = interval
    }

    /// Counts one occurrence of `reason` at `now` (ms) and says whether to log it.
    mutating func admit(_ reason: String, now: Int64) -> Decision {
        var state = reasons[reason] ?? Reason(windowStart: now)
        defer { reasons[reason] = state }
        state.total += 1
        if now - state.windowStart >= interval {
            state.windowStart = now
            state.written = 0
        }
        guard state.written < burst else {
            state.suppressed += 1
            return .suppress
        }
        state.written += 1
        defer { state.suppressed = 0 }
        return .log(suppressed: state.suppressed)
    }

    /// Occurrences of every reason so far.
    var totals: [String: Int] { reasons.mapValues(\.total) }
}
