import KithCRDT
import KithCluster
import KithHTTP
import KithProfile
import KithReplication
import KithStore

// What the API needs of the node around it, one protocol a role. The API has no sockets,
// threads or clocks of its own: a node hands it its writer thread, replication thread, audit
// and server (KithNode), and the in-process tests hand it doubles that answer at once.

/// The node's one writer (`GroupCommitter` in a node).
public protocol APIWriter: Sendable {
    /// Jobs waiting (for load shedding).
    var backlog: Int { get }
    /// Write transactions committed, and messages in them (for status and metrics).
    var commits: Int { get }
    var committedMessages: Int { get }
    /// Queues `deltas` for a group commit; `completion` runs once they are durable, or failed.
    func submit(_ deltas: [ProfileDelta], completion: @escaping @Sendable (Result<WriteCommitted, any Error>) -> Void)
    /// Runs `task` on the writer after what is queued before it (a task that writes opens its
    /// own transaction); false, without running it, once the writer is stopping.
    @discardableResult func perform(_ task: @escaping @Sendable () -> Void) -> Bool
    /// The highest local log sequence a write was acknowledged with, and the highest of those
    /// committed (readable). A writer that acknowledges only after its commit is readable
    /// (`GroupCommitter`) keeps both at 0; one that acknowledges once a write is in its
    /// write-ahead log (`LoggedWriter`) makes a read wait while the first is ahead.
    var acknowledgedLogSequence: UInt64 { get }
    var committedLogSequence: UInt64 { get }
    /// The write-ahead log's open segment, and its syncs so far (0 without a log).
    var writeLogBytes: Int { get }
    var writeLogSyncs: Int { get }
}

extension APIWriter {
    public var acknowledgedLogSequence: UInt64 { 0 }
    public var committedLogSequence: UInt64 { 0 }
    public var writeLogBytes: Int { 0 }
    public var writeLogSyncs: Int { 0 }
}

/// What a durable commit gives each request in it.
public struct WriteCommitted: Sendable {
    /// One outcome per delta of the request, in order.
    public var outcomes: [ApplyOutcome]
    /// This node's own change sequence after the commit (its writes included), or nil when
    /// it could not be read: session tokens and write concerns wait for it.
    public var ownSequence: UInt64?

    public init(outcomes: [ApplyOutcome], ownSequence: UInt64?) {
        self.outcomes = outcomes
        self.ownSequence = ownSequence
    }
}

/// The replication core as handlers reach it (`ReplicationService` in a node): every call
/// answers through a completion, by its deadline at the latest; none blocks the caller.
public protocol APIReplication: Sendable {
    /// The latest clock check, published by the replication thread (read without waiting on it).
    var clock: ClockState { get }
    /// Totals of the peer links, for metrics and sync status.
    var links: PeerLinkTotals { get }
    /// The writer committed something outside a group commit: push it now.
    func committed()
    /// `completion(held, required, met)` once this node's own changes through `ownThrough` are
    /// held by as many replicas as `concern` asks, or at the deadline.
    func awaitReplicas(
        ownThrough: UInt64, concern: WriteConcern, timeoutMillis: Int64,
        completion: @escaping @Sendable (_ held: Int, _ required: Int, _ met: Bool) -> Void)
    /// `completion(answered, required, met)` once as many replicas as `concern` asks have
    /// answered a pull sent now, or at the deadline.
    func awaitReplicaReads(
        _ concern: WriteConcern, timeoutMillis: Int64, completion: @escaping @Sendable (_ answered: Int, _ required: Int, _ met: Bool) -> Void)
    /// `completion(missing)` once this node holds everything `token` covers (missing empty),
    /// or at the deadline with the origins still missing.
    func awaitSession(_ token: VersionVector, timeoutMillis: Int64, completion: @escaping @Sendable (_ missing: [UInt64]) -> Void)
    /// Runs `body` on the replication core and answers its result, or a failure once
    /// `timeoutMillis` pass first.
    func call<T: Sendable>(
        timeoutMillis: Int, _ body: @escaping (ClusterNode) throws -> T, completion: @escaping @Sendable (Result<T, any Error>) -> Void)
    /// Runs `body` after `millis`; false, without running it, when the node is stopping.
    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool
    /// Every member this node knows, itself included, as of the replication thread's last tick.
    var members: [Member] { get }
}

extension APIReplication {
    /// `call` with the operator routes' deadline, 2 s.
    func call<T: Sendable>(_ body: @escaping (ClusterNode) throws -> T, completion: @escaping @Sendable (Result<T, any Error>) -> Void) {
        call(timeoutMillis: 2_000, body, completion: completion)
    }
}

/// This node's clock as the cluster measures it, published by the replication thread after
/// every tick so that request handlers read it without waiting on that thread.
public struct ClockState: Sendable {
    public var check: ClockCheck
    /// Each measured member: its name and clock.
    public var peers: [(name: String, clock: PeerClock)]
    public var jumps: Int

    public init(check: ClockCheck, peers: [(name: String, clock: PeerClock)], jumps: Int) {
        self.check = check
        self.peers = peers
        self.jumps = jumps
    }
}

/// What the peer links have carried since the node started.
public struct PeerLinkTotals: Sendable {
    public var framesSent = 0
    public var framesReceived = 0
    public var bytesSent = 0
    public var bytesReceived = 0
    /// Dropped: queue full, peer unreachable, or refused on receipt.
    public var framesDropped = 0
    /// Refused for another forget-key secret.
    public var connectionsRefused = 0
    /// Inbound connections closed for bad input, by reason.
    public var closedConnections: [String: Int] = [:]

    public init() {}
}

/// The node's read audit (`ReadAudit` in a node).
public protocol APIReadAudit: Sendable {
    /// Queues `record`; throws `AuditUnavailable` when reads cannot be recorded (the read is
    /// then refused, never served unaudited).
    func record(_ record: AuditRecord) throws
    /// Reads of any of `subjects` (keyed hashes), newest first.
    func records(about subjects: [[UInt8]], limit: Int) throws -> [AuditRecord]
    /// Records waiting for the audit's writer, and how many it holds before reads are refused.
    var queue: (records: Int, limit: Int) { get }
}

/// Reads cannot be recorded in the audit now.
public struct AuditUnavailable: Error {
    public init() {}
}

/// The process around the API: its server, its clocks and a place for work that may wait.
public protocol APIHost: Sendable {
    /// Open HTTP connections (status and metrics).
    var openConnections: Int { get }
    /// Wall-clock now in Unix milliseconds: message receipt, consent and erasure stamps, audit times.
    func wallMillis() -> Int64
    /// Monotonic now in nanoseconds (request latency, ages of peer contacts).
    func monotonicNanos() -> UInt64
    /// Runs `work` off the caller's thread: storage reads after a wait completed on the
    /// replication thread, and backups.
    func background(_ work: @escaping @Sendable () -> Void)
    /// Runs `body` `millis` from now on a timer that nothing else blocks (long polls' deadlines);
    /// false, without running it, once the node is stopping.
    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool
    /// POSTs `body` to a webhook receiver, off the caller's thread; `completion` gets the answer's
    /// status, or the failure (refused, reset, no answer within `timeoutMillis`).
    func post(
        _ url: WebhookURL, headers: [HTTPHeader], body: [UInt8], timeoutMillis: Int, completion: @escaping @Sendable (Result<Int, any Error>) -> Void)
    /// Sends `method target` with `headers` and `body` to the HTTP API at `address`, off the
    /// caller's thread: a scoped site forwarding a read of a customer it does not hold to a
    /// core. `completion` gets the answer, or the failure (refused, reset, no answer in time).
    func forward(
        to address: String, _ method: String, _ target: String, headers: [HTTPHeader], body: [UInt8], timeoutMillis: Int,
        completion: @escaping @Sendable (Result<HTTPResponse, any Error>) -> Void)
    /// What the retention sweeps have dropped since the node started (metrics).
    var retention: RetentionTotals { get }
    /// Compacts the data file now (`POST /v1/admin/compact`); blocks for as long as a backup
    /// takes, so never on an event loop.
    func compactDataFile() -> DataFileCompactionOutcome
}

/// What a compaction of the data file while the node serves did.
public enum DataFileCompactionOutcome: Sendable, Equatable {
    /// The rule did not call for one.
    case notDue
    /// The compacting copy is the data file now.
    case compacted(bytesBefore: Int, bytesAfter: Int)
    /// Nothing changed, for this reason (the next pass, or request, tries again).
    case gaveUp(String)
    /// Another compaction is under way.
    case running
    /// This node has no data file to compact (its store is in memory).
    case nothingToCompact
}

/// Sweeps finished, the events and traits they dropped, the rows they deflated and repacked,
/// and the compactions of the data file that followed them.
public struct RetentionTotals: Sendable, Equatable {
    public var passes = 0
    public var eventsDropped = 0
    public var traitsDropped = 0
    /// Records of identify, group and alias calls dropped under a `messages` rule.
    public var messagesDropped = 0
    /// Consent grants that lapsed under a consent retention rule.
    public var grantsDropped = 0
    /// Ledger blocks the sweeps deflated (ingest leaves them plain).
    public var blocksDeflated = 0
    /// Identifier rows the sweeps deflated (ingest leaves them plain).
    public var rowsDeflated = 0
    /// Rows the sweeps wrote again in their stored order, to fill their pages.
    public var rowsRepacked = 0
    /// Compactions of the data file swapped in while serving, and those that gave up.
    public var compactions = 0
    public var compactionsGivenUp = 0
    /// Seconds the writer spent on the sweeps' steps (`RetentionPacing` keeps it to a share).
    public var writerSeconds = 0.0

    public init(
        passes: Int = 0, eventsDropped: Int = 0, traitsDropped: Int = 0, messagesDropped: Int = 0, grantsDropped: Int = 0,
        blocksDeflated: Int = 0, rowsDeflated: Int = 0, rowsRepacked: Int = 0, compactions: Int = 0, compactionsGivenUp: Int = 0,
        writerSeconds: Double = 0
    ) {
        self.passes = passes
        self.eventsDropped = eventsDropped
        self.traitsDropped = traitsDropped
        self.messagesDropped = messagesDropped
        self.grantsDropped = grantsDropped
        self.blocksDeflated = blocksDeflated
        self.rowsDeflated = rowsDeflated
        self.rowsRepacked = rowsRepacked
        self.compactions = compactions
        self.compactionsGivenUp = compactionsGivenUp
        self.writerSeconds = writerSeconds
    }
}

extension APIHost {
    func monotonicMillis() -> Int64 { Int64(monotonicNanos() / 1_000_000) }
}
