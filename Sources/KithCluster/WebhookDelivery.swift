import KithCRDT
import KithReplication

/// Which member delivers a webhook subscription: of the core members this node sees alive
/// (itself included), the one ranking highest for the subscription's name (rendezvous hashing).
/// Every node decides alone; while views agree exactly one delivers, and when the owner dies the
/// next-ranked member takes over from the progress it left (docs/feed.md, "Webhooks").
public enum SubscriptionOwnership {
    public static func owner(of name: String, among members: [Member]) -> UInt64? {
        members.filter { $0.role == .core && $0.status == .alive }.max { rank(name, $0.id) < rank(name, $1.id) }?.id
    }

    /// A stable 64-bit rank of (name, member): FNV-1a over the name, mixed with the id.
    static func rank(_ name: String, _ member: UInt64) -> (UInt64, UInt64) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        var mixer = SplitMix64(seed: hash ^ member)
        return (mixer.next(), member)
    }
}

/// When a subscription's next delivery goes, after failures: exponential backoff from
/// `firstDelayMillis` doubling to `maximumDelayMillis`, and after `maximumAttempts` failed
/// attempts the batch is parked in the dead-letter list and delivery goes on after it.
public struct WebhookRetryPolicy: Equatable, Sendable {
    public var firstDelayMillis: Int64
    public var maximumDelayMillis: Int64
    public var maximumAttempts: Int

    public init(firstDelayMillis: Int64 = 1_000, maximumDelayMillis: Int64 = 60_000, maximumAttempts: Int = 8) {
        precondition(
            firstDelayMillis > 0 && maximumDelayMillis >= firstDelayMillis && maximumAttempts > 0,
            "a retry policy \(firstDelayMillis) \(maximumDelayMillis) \(maximumAttempts)")
        self.firstDelayMillis = firstDelayMillis
        self.maximumDelayMillis = maximumDelayMillis
        self.maximumAttempts = maximumAttempts
    }

    public enum Decision: Equatable, Sendable {
        /// Send the batch now.
        case deliver
        /// Not before this time.
        case wait(until: Int64)
        /// Park the batch: it failed `maximumAttempts` times.
        case deadLetter
    }

    /// What to do with the batch at the head of a subscription that failed it `failures` times
    /// in a row, the last at `lastFailure`, at `now`.
    public func decide(failures: Int, lastFailure: Int64?, now: Int64) -> Decision {
        if failures >= maximumAttempts { return .deadLetter }
        guard failures > 0, let lastFailure else { return .deliver }
        let due = lastFailure + delay(afterFailures: failures)
        return now >= due ? .deliver : .wait(until: due)
    }

    /// The wait after the `failures`-th failure in a row: first, then doubling, capped.
    public func delay(afterFailures failures: Int) -> Int64 {
        var delay = firstDelayMillis
        for _ in 1..<max(1, failures) {
            delay = min(maximumDelayMillis, delay * 2)
            if delay == maximumDelayMillis { break }
        }
        return delay
    }
}

/// How far a subscription's deliveries have gone, and the batches parked after failing: what the
/// delivering node writes as a replicated setting, so that the next deliverer goes on from it.
public struct SubscriptionProgress: Equatable, Sendable {
    /// The feed token after the last batch delivered or parked.
    public var token: FeedToken
    public var delivered: Int
    public var deadLetters: [DeadLetter]
    /// The replay request last carried out (its stamp's time).
    public var replayedRequest: Int64

    /// A batch that failed every attempt: the feed between two tokens (never the records
    /// themselves, which would outlive a later erasure), rendered again when replayed.
    public struct DeadLetter: Equatable, Sendable {
        public var id: Int
        public var from: FeedToken
        public var through: FeedToken
        public var records: Int
        public var failedAt: Int64
        public var error: String

        public init(id: Int, from: FeedToken, through: FeedToken, records: Int, failedAt: Int64, error: String) {
            self.id = id
            self.from = from
            self.through = through
            self.records = records
            self.failedAt = failedAt
            self.error = error
        }
    }

    /// The newest dead letters kept: older ones go (and are counted in the metrics).
    public static let deadLetterLimit = 100

    public init(token: FeedToken, delivered: Int = 0, deadLetters: [DeadLetter] = [], replayedRequest: Int64 = 0) {
        self.token = token
        self.delivered = delivered
        self.deadLetters = deadLetters
        self.replayedRequest = replayedRequest
    }
}

/// What the node delivering a subscription decides about it, pure: where the next batch starts
/// (dead letters being replayed first), what a delivery, a failure, a parked batch or a skipped
/// gap does to its place, and when its progress is due to be written. The shell walks the feed,
/// posts, and writes the progress when told; `WebhookRetryPolicy` says when to try again.
public struct WebhookRun: Equatable, Sendable {
    public var progress: SubscriptionProgress
    public var failures = 0
    public var lastFailure: Int64?
    public var lastError: String?
    public var inFlight = false
    /// Progress not yet written as a setting, and when it last was (monotonic ms).
    public var unsaved = false
    public var savedAt: Int64 = .min / 2
    /// Dead letters being delivered again, oldest first.
    public var replaying: [SubscriptionProgress.DeadLetter] = []
    /// When the definition and the progress were last written again, so that nodes back from a
    /// resync learn them.
    public var reassertedAt: Int64 = .min / 2

    public init(progress: SubscriptionProgress) { self.progress = progress }

    /// Where the next batch starts: the dead letter being replayed, else the subscription's place.
    public var from: FeedToken { replaying.first?.from ?? progress.token }

    /// A replay asked at `time`: every dead letter goes again, first (once per request).
    public mutating func replayRequested(at time: Int64) {
        guard time > progress.replayedRequest else { return }
        replaying += progress.deadLetters
        progress.deadLetters = []
        progress.replayedRequest = time
        unsaved = true
    }

    /// Whether the definition and the progress are due to be written again at `now` (every
    /// `interval`); when they are, the progress is marked for writing.
    public mutating func reassertIfDue(now: Int64, every interval: Int64) -> Bool {
        guard now - reassertedAt >= interval else { return false }
        reassertedAt = now
        unsaved = true
        return true
    }

    /// The batch ending at `token` was delivered (`records` of them).
    public mutating func delivered(records: Int, through token: FeedToken) {
        failures = 0
        lastFailure = nil
        progress.delivered += records
        advance(to: token)
    }

    /// The batch failed at `time`.
    public mutating func failed(at time: Int64, error: String) {
        failures += 1
        lastFailure = time
        lastError = error
    }

    /// The batch ending at `token` failed every attempt: it is parked as a dead letter at `wall`
    /// (Unix ms), and delivery goes on after it.
    public mutating func park(through token: FeedToken, records: Int, at wall: Int64) {
        failures = 0
        lastFailure = nil
        addDeadLetter(from: from, through: token, records: records, at: wall, error: lastError ?? "failed")
        advance(to: token)
    }

    /// The log no longer holds the range from here: it is parked as a dead letter (a replay of
    /// it answers so), and delivery goes on from `current`, the feed's place now.
    public mutating func skipGap(to current: FeedToken, at wall: Int64) {
        addDeadLetter(from: from, through: current, records: 0, at: wall, error: "the change log no longer holds this range")
        if replaying.isEmpty { progress.token = current } else { replaying.removeFirst() }
        unsaved = true
    }

    /// The walk passed over entries the filters leave out (settings among them, this
    /// progress's own writes too) up to `token`. Not worth a write of its own: that write would
    /// be one more entry to pass over, for ever.
    public mutating func passedOver(to token: FeedToken) {
        guard token != from else { return }
        let wasUnsaved = unsaved
        advance(to: token)
        unsaved = wasUnsaved
    }

    /// Whether the progress is to be written now: something changed, and `interval` has passed
    /// since the last write (or `immediately`). When it is, it counts as written.
    public mutating func takeSave(now: Int64, every interval: Int64, immediately: Bool = false) -> Bool {
        guard unsaved && (immediately || now - savedAt >= interval) else { return false }
        unsaved = false
        savedAt = now
        return true
    }

    /// Moves past a batch: the replay at its head, or the subscription's own place.
    private mutating func advance(to token: FeedToken) {
        unsaved = true
        guard var replay = replaying.first else { return progress.token = token }
        if token.versions.covers(replay.through.versions) {
            replaying.removeFirst()
        } else {
            replay.from = token
            replaying[0] = replay
        }
    }

    private mutating func addDeadLetter(from: FeedToken, through: FeedToken, records: Int, at wall: Int64, error: String) {
        let id = (progress.deadLetters.map(\.id).max() ?? 0) + 1
        progress.deadLetters.append(
            SubscriptionProgress.DeadLetter(id: id, from: from, through: through, records: records, failedAt: wall, error: error))
        progress.deadLetters = Array(progress.deadLetters.suffix(SubscriptionProgress.deadLetterLimit))
    }
}
