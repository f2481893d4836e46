import KithCRDT
import KithCluster
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import KithStore
import Synchronization

/// A node's HTTP API: requests in, responses out, through the route table (`NodeAPI.routes`).
/// It owns no socket, thread or clock: the node around it (KithNode's `Node`) hands it the
/// writer, the replication core, the audit and the host as protocols (Services.swift), and the
/// in-process tests hand it doubles, so every status code and error body is decided here and
/// tested without a process.
public final class NodeAPI: Sendable {
    public static let version = "0.1.0"
    /// Segment's limits: 32 KB per message, 500 KB and 2,500 messages per batch.
    static let maximumMessageBytes = 32 * 1024
    static let maximumBatchBytes = 500 * 1024
    static let maximumBatchMessages = 2_500

    /// What the node's configuration tells the API.
    public struct Settings: Sendable {
        public var nodeName: String
        /// Shown in status only.
        public var dataDirectory: String
        /// This node's origin: its own changes advance this component of session tokens.
        public var origin: UInt64
        /// Queued writer jobs beyond which ingest answers 429.
        public var ingestQueueLimit: Int
        /// Log every request (otherwise only those answered 5xx).
        public var logRequests: Bool
        /// Segment write keys accepted for ingest.
        public var writeKeys: [String]
        /// SHA-256 of each accepted bearer token, with its principal.
        public var principals: [(hash: [UInt8], principal: Principal)]
        /// What each purpose may see (docs/privacy.md).
        public var policy: Policy
        /// Keys profiles in the audit the way erased identifiers are keyed: never by the identifier.
        public var subjectHasher: HMACForgetKeyHasher
        /// This node in hybrid-clock stamps of unlinks and erasures.
        public var clockNode: UInt64
        /// Where messages carry identifiers (and the region national phone numbers are read in).
        public var identifierSources: IdentifierSources
        /// Which values identify nobody (the parser's part of the identity rules).
        public var identityRules: IdentityRules
        /// The oldest, in ms before receipt, a message may be dated (`maxEventAge`; nil: any).
        public var maxEventAge: Int64?
        /// Seals the cursors of walks over every profile (export).
        public var exportCursor: ExportCursor
        /// Derives each webhook subscription's secret and signs its deliveries.
        public var webhookSigner: WebhookSigner
        /// When a failed webhook batch goes again, and when it is parked.
        public var webhookRetry: WebhookRetryPolicy
        /// This node is a scoped site (docs/replication.md, "Scope"): a read of a customer it
        /// does not hold goes to a core, or is answered 503 `not_held_here`.
        public var scopedSite = false

        public init(
            nodeName: String, dataDirectory: String, origin: UInt64, ingestQueueLimit: Int, logRequests: Bool, writeKeys: [String],
            principals: [(hash: [UInt8], principal: Principal)], policy: Policy, subjectHasher: HMACForgetKeyHasher,
            exportCursor: ExportCursor, clockNode: UInt64, identifierSources: IdentifierSources = .builtIn,
            identityRules: IdentityRules = .builtIn, maxEventAge: Int64? = nil, webhookSigner: WebhookSigner,
            webhookRetry: WebhookRetryPolicy = WebhookRetryPolicy()
        ) {
            self.webhookRetry = webhookRetry
            self.exportCursor = exportCursor
            self.webhookSigner = webhookSigner
            self.maxEventAge = maxEventAge
            self.identifierSources = identifierSources
            self.identityRules = identityRules
            self.nodeName = nodeName
            self.dataDirectory = dataDirectory
            self.origin = origin
            self.ingestQueueLimit = ingestQueueLimit
            self.logRequests = logRequests
            self.writeKeys = writeKeys
            self.principals = principals
            self.policy = policy
            self.subjectHasher = subjectHasher
            self.clockNode = clockNode
        }
    }

    let settings: Settings
    let writeKeys: [[UInt8]]
    var policy: Policy { settings.policy }
    var exportCursor: ExportCursor { settings.exportCursor }
    var origin: UInt64 { settings.origin }
    let store: any NodeStore
    let writer: any APIWriter
    /// Nil for a node on its own: no replicas to wait for, no clock to agree with.
    let replication: (any APIReplication)?
    let audit: any APIReadAudit
    let host: any APIHost
    public let log: Log
    let clock: Mutex<HybridLogicalClock>
    let parser: SegmentMessageParser
    let stopping = Atomic<Bool>(false)
    /// The state of `nextRequestIdentifier`'s generator, from a random start.
    private let requestSequence = Atomic<UInt64>(UInt64.random(in: .min ... .max))
    /// The time of the last privacy change made here, per customer named (recent ones only).
    private let lastChangeTimes = Mutex<[Identifier: Int64]>([:])
    let startedAt: Int64
    public let metrics = NodeMetrics()
    /// Long polls of the change feed waiting for the log to grow.
    let feedWaiters = LogWaiters()
    /// Reads waiting for the commit of writes acknowledged before them (`afterAcknowledgedWrites`).
    let commitWaiters = LogWaiters()
    /// The webhook subscriptions this node delivers, and what their deliveries came to.
    let webhookRuns = Mutex<[String: WebhookRun]>([:])
    let webhookTotals = Mutex(WebhookTotals())

    public init(
        settings: Settings, store: any NodeStore, writer: any APIWriter, replication: (any APIReplication)?, audit: any APIReadAudit,
        host: any APIHost, log: Log
    ) {
        self.settings = settings
        writeKeys = settings.writeKeys.map { Array($0.utf8) }
        self.store = store
        self.writer = writer
        self.replication = replication
        self.audit = audit
        self.host = host
        self.log = log
        clock = Mutex(HybridLogicalClock(node: settings.clockNode))
        parser = SegmentMessageParser(rules: settings.identityRules, sources: settings.identifierSources, maximumAge: settings.maxEventAge)
        startedAt = host.monotonicMillis()
    }

    /// The time of a consent or restriction change this node makes on request about
    /// `identifier`: later than the previous one's about it, so that two changes asked within
    /// one millisecond keep the order they were asked in (a register is last-writer-wins by
    /// time, and denied wins a tie). Per customer, so that many changes a second about many
    /// customers never date any of them ahead of the clock; entries older than a second are
    /// dropped, since the clock has passed them.
    func changeTime(for identifier: Identifier) -> Int64 {
        // Keyed by the profile, so that changes asked through two of its identifiers keep
        // their order too; a failed read keys by the identifier named (its order still holds).
        let identifier = ((try? store.view(of: identifier)) ?? nil)?.canonical ?? identifier
        let now = host.wallMillis()
        return lastChangeTimes.withLock { times in
            if times.count > 4_096 { times = times.filter { $0.value >= now - 1_000 } }
            let time = max(now, (times[identifier] ?? .min / 2) + 1)
            times[identifier] = time
            return time
        }
    }

    /// From now on `/readyz` answers 503: the node is stopping. Long polls of the change feed
    /// are answered now.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        feedWaiters.stop()
        commitWaiters.stop()
    }

    /// The writer committed writes it had acknowledged (durable in its write-ahead log, not
    /// yet synced in the store): reads waiting for them look again. Never waits.
    public func writesVisible() { commitWaiters.logAdvanced() }

    /// Whether a read waits for a commit of writes this node acknowledged, or a long poll or an
    /// event stream of the change feed waits for the log to grow: the writer then commits
    /// sooner (`WriteLogBatching`). Asked by the writer before each request it takes.
    public var waitsForCommits: Bool { commitWaiters.count > 0 || feedWaiters.count > 0 }

    /// The change log grew (a commit of the writer, local or replicated): long polls of the
    /// change feed walk again, and reads waiting for a commit look again. Never waits; called
    /// on the writer's thread.
    public func logAdvanced() {
        commitWaiters.logAdvanced()
        feedWaiters.logAdvanced()
    }

    /// A write this API made on the writer outside a group commit (an erasure, an unmerge, a
    /// setting): replication pushes it now, and the change feed's waiters walk again, as after
    /// a group commit.
    func committedOutsideGroup() {
        replication?.committed()
        logAdvanced()
    }

    /// Answers `request` through `responder`, with a `Request-Id`, counted in the metrics and
    /// logged (every request, or only 5xx answers).
    public func handle(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let requestId = nextRequestIdentifier()
        let started = host.monotonicNanos()
        let match = Self.routes.match(method: request.method, path: request.path)
        let route = Self.routeName(match)
        let logRequests = settings.logRequests
        let respond: @Sendable (HTTPResponse) -> Void = { [metrics, log, host] response in
            var response = response
            response.headers.append(HTTPHeader("Request-Id", requestId))
            let nanos = host.monotonicNanos() - started
            let seconds = Double(nanos) / 1e9
            metrics.record(route: route, status: response.status, seconds: seconds)
            if logRequests || response.status >= 500 {
                log(
                    response.status >= 500 ? .error : .info, "request",
                    [
                        ("request.id", .string(requestId)), ("http.method", .string(request.method)), ("http.route", .string(route)),
                        ("http.status", .number(JSONNumber(Int64(response.status)))),
                        ("duration_ms", .number(Self.millis(microseconds: nanos / 1_000))),
                    ])
            }
            responder.respond(response)
        }
        self.route(request, match, respond: respond)
    }

    /// Milliseconds with three decimals, as logs show durations.
    static func millis(microseconds: UInt64) -> JSONNumber {
        let fraction = String(microseconds % 1_000)
        guard let number = JSONNumber(literal: "\(microseconds / 1_000)." + String(repeating: "0", count: 3 - fraction.count) + fraction) else {
            preconditionFailure("\(microseconds) µs did not make a JSON number")
        }
        return number
    }

    /// A `Request-Id`: SplitMix64's output for a state that steps once a request from a random
    /// start. Distinct for every request of this process (the output function is a bijection),
    /// unlikely to repeat across restarts, and no system call for random bytes per request (one
    /// was 2 % of a point read).
    func nextRequestIdentifier() -> String {
        String(SplitMix64.mix(requestSequence.wrappingAdd(SplitMix64.increment, ordering: .relaxed).newValue), radix: 16)
    }
}
