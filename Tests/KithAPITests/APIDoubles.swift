import Foundation
import KithCRDT
import KithCluster
import KithCrypto
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import KithReplication
import KithStore
import Synchronization
import Testing

@testable import KithAPI

// Doubles of what a node hands its API, each answering on the caller's thread, so that a
// request is answered before `TestAPI.call` returns: whatever is not answered by then was
// left waiting, and the test says so.

/// The one writer, run at once: commits straight into the in-memory store.
final class InlineWriter: APIWriter, Sendable {
    let store: MemoryProfileStore
    let origin: UInt64
    private struct State {
        var commits = 0
        var messages = 0
        var backlog = 0
        var failing = false
        var stopped = false
        var acknowledged: UInt64 = 0
        var committed: UInt64 = 0
    }
    private let state = Mutex(State())

    init(store: MemoryProfileStore, origin: UInt64) {
        self.store = store
        self.origin = origin
    }

    /// Jobs the writer reports queued (load shedding answers 429 past the limit).
    func setBacklog(_ jobs: Int) { state.withLock { $0.backlog = jobs } }
    /// Every commit fails from now on.
    func fail() { state.withLock { $0.failing = true } }
    /// The writer refuses jobs, as one that is stopping does.
    func stop() { state.withLock { $0.stopped = true } }

    /// As a writer with a write-ahead log reports them: acknowledged writes a commit has not
    /// yet made readable when `acknowledged` is past `committed` (0 and 0: none).
    func setLogSequences(acknowledged: UInt64, committed: UInt64) {
        state.withLock { ($0.acknowledged, $0.committed) = (acknowledged, committed) }
    }
    var acknowledgedLogSequence: UInt64 { state.withLock { $0.acknowledged } }
    var committedLogSequence: UInt64 { state.withLock { $0.committed } }

    var backlog: Int { state.withLock { $0.backlog } }
    var commits: Int { state.withLock { $0.commits } }
    var committedMessages: Int { state.withLock { $0.messages } }

    struct CommitFailed: Error {}

    func submit(_ deltas: [ProfileDelta], completion: @escaping @Sendable (Result<WriteCommitted, any Error>) -> Void) {
        let (failing, stopped) = state.withLock { ($0.failing, $0.stopped) }
        guard !failing, !stopped else { return completion(.failure(CommitFailed())) }
        completion(
            Result {
                let outcomes = try store.apply(deltas)
                state.withLock { state in
                    state.commits += 1
                    state.messages += deltas.count
                }
                return WriteCommitted(outcomes: outcomes, ownSequence: try store.versionVector()[origin])
            })
    }

    func perform(_ task: @escaping @Sendable () -> Void) -> Bool {
        guard !state.withLock({ $0.stopped }) else { return false }
        task()
        return true
    }
}

/// The replication core, scripted: waits end at once with the outcome the test set; calls
/// run at once on a real `ClusterNode` over the same store, alone in its cluster; timers wait
/// until the test fires them.
final class ScriptedReplication: APIReplication, @unchecked Sendable {
    struct Script {
        var clock: ClockState
        var links = PeerLinkTotals()
        /// `(held, required, met)` for `w=` writes, and `(answered, required, met)` for `consistency=` reads.
        var replicas = (held: 2, required: 2, met: true)
        var replicaReads = (answered: 2, required: 2, met: true)
        /// The origins a session wait ends without.
        var sessionMissing: [UInt64] = []
        /// Calls fail as a busy replication thread's do.
        var callsTimeOut = false
        /// Timers are refused, as when the node is stopping.
        var timersRefused = false
        /// The members the replication thread last published (this node and its peers).
        var members: [Member] = []
    }
    struct Busy: Error {}

    let script: Mutex<Script>
    /// Only `call` touches it, under `lock`.
    private let node: ClusterNode
    private let lock = NSLock()
    private let timers = Mutex<[(millis: Int, body: @Sendable () -> Void)]>([])
    let pushes = Atomic<Int>(0)
    let sessionWaits = Mutex<[VersionVector]>([])

    init(store: MemoryProfileStore, origin: UInt64, settings: ReplicationSettings = ReplicationSettings()) throws {
        let me = Member(id: origin, name: "api-test", address: "127.0.0.1:1", role: .core)
        node = try ClusterNode(store: store, me: me, seeds: [], settings: settings, seed: 1) { _, _ in }
        script = Mutex(Script(clock: ClockState(check: Self.check(.withinBound), peers: [], jumps: 0)))
    }

    /// A clock check with `verdict`, measured against two other core members.
    static func check(_ verdict: ClockCheck.Verdict, offset: Int64? = 3, maximumOffset: Int64 = 250) -> ClockCheck {
        ClockCheck(
            verdict: verdict, offset: offset, maximumOffset: maximumOffset, members: 2, measured: 2, agreeing: verdict == .withinBound ? 2 : 0)
    }

    /// A peer named `name` joins this node's cluster (its membership sees it alive).
    func meet(_ name: String, id: UInt64, role: MemberRole = .core, scoped: Bool = false) throws {
        let peer = Member(id: id, name: name, address: "127.0.0.1:\(id)", role: role, scoped: scoped)
        try lock.withLock {
            try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer])), from: id, address: peer.address, now: 0)
        }
    }

    /// A message from the peer `id` (met before), at `now`.
    func receive(_ message: PeerMessage, from id: UInt64, now: Int64) throws {
        try lock.withLock { try node.receive(message, from: id, address: "127.0.0.1:\(id)", now: now) }
    }

    /// A pull from the peer `id` (met before) now: its request number, nil if the peer is unknown.
    func pull(from id: UInt64, now: Int64) throws -> UInt64? {
        try lock.withLock {
            guard let member = node.peerStates.first(where: { $0.member.id == id })?.member else { return nil }
            return try node.pull(from: member, now: now)
        }
    }

    /// The replication core's timers at `now` (pulls, pushes, log truncation).
    func tick(now: Int64) throws {
        try lock.withLock { try node.tick(now: now) }
    }

    /// Runs the timers set so far, and returns their delays.
    func fireTimers() -> [Int] {
        let due = timers.withLock { timers in
            defer { timers.removeAll() }
            return timers
        }
        for timer in due { timer.body() }
        return due.map(\.millis)
    }

    var clock: ClockState { script.withLock { $0.clock } }
    var links: PeerLinkTotals { script.withLock { $0.links } }
    func committed() { pushes.add(1, ordering: .relaxed) }

    func awaitReplicas(
        ownThrough: UInt64, concern: WriteConcern, timeoutMillis: Int64,
        completion: @escaping @Sendable (_ held: Int, _ required: Int, _ met: Bool) -> Void
    ) {
        let answer = script.withLock { $0.replicas }
        completion(answer.held, answer.required, answer.met)
    }

    func awaitReplicaReads(
        _ concern: WriteConcern, timeoutMillis: Int64, completion: @escaping @Sendable (_ answered: Int, _ required: Int, _ met: Bool) -> Void
    ) {
        let answer = script.withLock { $0.replicaReads }
        completion(answer.answered, answer.required, answer.met)
    }

    func awaitSession(_ token: VersionVector, timeoutMillis: Int64, completion: @escaping @Sendable (_ missing: [UInt64]) -> Void) {
        sessionWaits.withLock { $0.append(token) }
        completion(script.withLock { $0.sessionMissing })
    }

    func call<T: Sendable>(
        timeoutMillis: Int, _ body: @escaping (ClusterNode) throws -> T, completion: @escaping @Sendable (Result<T, any Error>) -> Void
    ) {
        guard !script.withLock({ $0.callsTimeOut }) else { return completion(.failure(Busy())) }
        let result = lock.withLock { Result { try body(node) } }
        completion(result)
    }

    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool {
        guard !script.withLock({ $0.timersRefused }) else { return false }
        timers.withLock { $0.append((millis, body)) }
        return true
    }

    var members: [Member] { script.withLock { $0.members } }
}

/// The read audit in memory; it can be made to refuse records, as a full audit queue does.
final class MemoryAudit: APIReadAudit, Sendable {
    private let state = Mutex<(records: [AuditRecord], refusing: Bool)>(([], false))

    func refuse() { state.withLock { $0.refusing = true } }
    var records: [AuditRecord] { state.withLock { $0.records } }
    /// Records are kept at once: none wait; full once refusing.
    var queue: (records: Int, limit: Int) { state.withLock { $0.refusing ? (1, 1) : (0, 1) } }

    func record(_ record: AuditRecord) throws {
        try state.withLock { state in
            guard !state.refusing else { throw AuditUnavailable() }
            state.records.append(record)
        }
    }

    func records(about subjects: [[UInt8]], limit: Int) throws -> [AuditRecord] {
        let wanted = Set(subjects)
        return Array(state.withLock { $0.records }.filter { !wanted.isDisjoint(with: $0.subjects) }.reversed().prefix(limit))
    }
}

/// A host whose clocks the test sets and whose background work runs at once.
final class TestHost: APIHost, Sendable {
    let wall = Atomic<Int64>(1_780_000_000_000)  // 2026-05-28, after every fixed timestamp in the tests
    let monotonic = Atomic<UInt64>(5_000_000_000)
    var openConnections: Int { 3 }
    func wallMillis() -> Int64 { wall.load(ordering: .relaxed) }
    func monotonicNanos() -> UInt64 { monotonic.load(ordering: .relaxed) }
    func background(_ work: @escaping @Sendable () -> Void) { work() }
    var retention: RetentionTotals { RetentionTotals(passes: 2, eventsDropped: 5, traitsDropped: 1, messagesDropped: 3) }
    /// An in-memory store has no file: what a node over one answers.
    func compactDataFile() -> DataFileCompactionOutcome { .nothingToCompact }

    /// Timers wait until the test fires them (`fireTimers`).
    private let timers = Mutex<[@Sendable () -> Void]>([])
    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool {
        timers.withLock { $0.append(body) }
        return true
    }

    /// What webhook receivers answer (status or failure), in order; 200 once the script runs out.
    let receiverScript = Mutex<[Result<Int, any Error>]>([])
    /// Deliveries made: where, with which headers and body.
    let deliveries = Mutex<[(url: WebhookURL, headers: [HTTPHeader], body: [UInt8], answered: Int?)]>([])
    func post(
        _ url: WebhookURL, headers: [HTTPHeader], body: [UInt8], timeoutMillis: Int, completion: @escaping @Sendable (Result<Int, any Error>) -> Void
    ) {
        let answer = receiverScript.withLock { $0.isEmpty ? .success(200) : $0.removeFirst() }
        deliveries.withLock { $0.append((url, headers, body, try? answer.get())) }  // nil: the receiver failed
        completion(answer)
    }

    /// What a core answers a forwarded read (nil: no core answers), and the reads forwarded.
    let forwardAnswer = Mutex<HTTPResponse?>(nil)
    let forwarded = Mutex<[(address: String, target: String, headers: [HTTPHeader])]>([])
    struct Unreachable: Error {}
    func forward(
        to address: String, _ method: String, _ target: String, headers: [HTTPHeader], body: [UInt8], timeoutMillis: Int,
        completion: @escaping @Sendable (Result<HTTPResponse, any Error>) -> Void
    ) {
        forwarded.withLock { $0.append((address, target, headers)) }
        completion(forwardAnswer.withLock { $0 }.map { .success($0) } ?? .failure(Unreachable()))
    }

    /// Runs the timers set so far; returns how many ran.
    @discardableResult func fireTimers() -> Int {
        let due = timers.withLock { timers in
            defer { timers.removeAll() }
            return timers
        }
        for timer in due { timer() }
        return due.count
    }
}

/// An API over the in-memory store and the doubles above, replicating or alone, driven through
/// `NodeAPI.handle` with a recording responder.
final class TestAPI {
    static let writeKey = "wk-test"
    static let origin: UInt64 = 0x0A91
    /// One bearer token per role, each granted every purpose.
    static let tokens: [Role: String] = Dictionary(uniqueKeysWithValues: Role.allCases.map { ($0, "token-\($0.rawValue)") })

    let store: MemoryProfileStore
    let writer: InlineWriter
    let replication: ScriptedReplication?
    let audit = MemoryAudit()
    let host = TestHost()
    let api: NodeAPI

    /// A bearer token (its own text is its name) with a role and purposes.
    struct Token {
        var name: String
        var role: Role
        var purposes: [String]
    }

    /// `tokens`: more principals besides one per role (`TestAPI.tokens`).
    init(
        replicated: Bool = false, ingestQueueLimit: Int = 1_000, tokens extra: [Token] = [],
        identifierSources: IdentifierSources = .builtIn, policy: Policy = .builtIn, maxEventAge: Int64? = nil, scopedSite: Bool = false,
        replicationSettings: ReplicationSettings = ReplicationSettings()
    ) throws {
        let secret = Array(repeating: UInt8(7), count: 32)
        store = MemoryProfileStore(configuration: StoreConfiguration(node: Self.origin, forgetKeySecret: secret, replicates: replicated))
        writer = InlineWriter(store: store, origin: Self.origin)
        replication = replicated ? try ScriptedReplication(store: store, origin: Self.origin, settings: replicationSettings) : nil
        let principals =
            Self.tokens.map { role, token in
                (
                    hash: Crypto.sha256(Array(token.utf8)),
                    principal: Principal(name: role.rawValue, role: role, purposes: policy.purposes.keys.sorted())
                )
            }
            + extra.map { token in
                (hash: Crypto.sha256(Array(token.name.utf8)), principal: Principal(name: token.name, role: token.role, purposes: token.purposes))
            }
        var settings = NodeAPI.Settings(
            nodeName: "api-test", dataDirectory: "/nowhere", origin: Self.origin, ingestQueueLimit: ingestQueueLimit, logRequests: false,
            writeKeys: [Self.writeKey], principals: principals, policy: policy, subjectHasher: HMACForgetKeyHasher(secret: secret),
            exportCursor: ExportCursor(secret: secret), clockNode: 1,
            identifierSources: identifierSources, maxEventAge: maxEventAge, webhookSigner: WebhookSigner(secret: secret))
        settings.scopedSite = scopedSite
        api = NodeAPI(settings: settings, store: store, writer: writer, replication: replication, audit: audit, host: host, log: Log(minimum: .off))
    }

    /// The API's answer to one request, which must come before `handle` returns (every double
    /// answers at once). `token`: a bearer token by its text (one of `init`'s `tokens`),
    /// instead of a role's.
    func call(
        _ method: String, _ target: String, role: Role? = nil, token: String? = nil, headers: [HTTPHeader] = [], body: String = "",
        firingTimers: Bool = false
    ) -> HTTPResponse? {
        var headers = headers
        if let token = token ?? role.map({ Self.tokens[$0]! }) { headers.append(HTTPHeader("Authorization", "Bearer \(token)")) }
        return send(method, target, headers: headers, body: Array(body.utf8), firingTimers: firingTimers)
    }

    func ingest(_ path: String, _ body: String, headers: [HTTPHeader] = []) -> HTTPResponse? {
        ingest(path, Array(body.utf8), headers: headers)
    }

    /// A Segment call with the write key as the basic-auth user.
    func ingest(_ path: String, _ body: [UInt8], headers: [HTTPHeader] = []) -> HTTPResponse? {
        let authorization = HTTPHeader("Authorization", "Basic " + Data("\(Self.writeKey):".utf8).base64EncodedString())
        return send("POST", path, headers: [authorization] + headers, body: body)
    }

    /// `firingTimers`: the replication core's timers fire before the answer is taken (an
    /// erasure's acknowledgement waits for one).
    func send(_ method: String, _ target: String, headers: [HTTPHeader], body: [UInt8], firingTimers: Bool = false) -> HTTPResponse? {
        let answered = start(method, target, headers: headers, body: body)
        if firingTimers { _ = replication?.fireTimers() }
        let responses = answered.responses.withLock { $0 }
        if responses.count > 1 { Issue.record("\(method) \(target) was answered \(responses.count) times") }
        return responses.first
    }

    /// A `GET` with `role`'s bearer token whose answer may come after the call returns (a long
    /// poll, a read waiting for a commit): what it answered so far is in the result.
    func start(_ target: String, role: Role) -> Answers {
        start("GET", target, headers: [HTTPHeader("Authorization", "Bearer \(Self.tokens[role]!)")], body: [])
    }

    func start(_ method: String, _ target: String, headers: [HTTPHeader], body: [UInt8]) -> Answers {
        let answered = Answers()
        let request = HTTPRequest(method: method, target: target, version: .http11, headers: headers, body: body)
        api.handle(request, HTTPResponder { response in answered.responses.withLock { $0.append(response) } })
        return answered
    }
}

/// What a handler answered so far (a long poll answers later than its call returns).
final class Answers: Sendable {
    let responses = Mutex<[HTTPResponse]>([])
}

extension HTTPResponse {
    var json: JSONValue? { try? JSONParser.parse(body) }  // nil: not JSON, which the callers check
    var errorCode: String? { json?["error"]?["code"]?.stringValue ?? json?["code"]?.stringValue }
    func header(_ name: String) -> String? { headers.first { $0.name.lowercased() == name.lowercased() }?.value }
    var text: String { String(decoding: body, as: UTF8.self) }
}
