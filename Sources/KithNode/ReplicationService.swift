import Foundation
import KithAPI
import KithCRDT
import KithCluster
import KithCrypto
import KithJSON
import KithPolicy
import KithReplication
import KithStore
import Synchronization

/// Runs a `ClusterNode` on real sockets: one thread owns it (the node is single-threaded by
/// design, as in the simulation); peer messages, commits and operator calls reach it through an
/// inbox, and it ticks every 50 ms on the wall clock.
final class ReplicationService: APIReplication, @unchecked Sendable {
    /// Items for the replication thread. Calls carry closures over the node, which only that
    /// thread runs: hence unchecked.
    private enum Work: @unchecked Sendable {
        case message(PeerMessage, UInt64, String)
        case committed
        case call(() -> Void)
        /// The rest of a replicated write, once the writer has run it (`ClusterNode.write`).
        case written(() throws -> Void)
        /// A caller's wait, decided by the node (`ClusterNode.startWait`); its deadline is on
        /// the monotonic clock.
        case wait(ConsistencyWait, deadline: Int64, completion: @Sendable (ConsistencyOutcome) -> Void)
    }

    /// The callers waiting, by the number the node knows their wait by. Only the replication
    /// thread touches these.
    private var waitCompletions: [UInt64: @Sendable (ConsistencyOutcome) -> Void] = [:]
    private var lastWait: UInt64 = 0

    /// The latest clock check, published after every tick (`clock` reads it).
    private let publishedClock: Mutex<ClockState>
    /// Every member, this node included, published after every tick (`members` reads it).
    private let publishedMembers = Mutex<[Member]>([])
    private var lastClockLog: (verdict: ClockCheck.Verdict, at: Int64)?

    let transport: PeerTransport
    private let node: ClusterNode
    /// The queue into the replication thread.
    private let inbox = ClosableQueue<Work>()
    /// Deadlines of calls into the replication thread, kept off that thread (also the node's
    /// other timed answers: an erasure answered once the clock has passed its boundary).
    let deadlines = Deadlines(name: "kith-deadlines")
    private let finished = DispatchSemaphore(value: 0)
    private let keyFile: String?
    /// Whether the last reload of the key file failed (so that it is logged once).
    private var keyFileFailing = false
    private let log: Log
    /// This node's origin id.
    private let origin: UInt64

    /// The replication core's settings from the node's configuration.
    /// `origin` names this node in a site's `seen` clauses; `policy` decides what a scoped site's
    /// purposes may see (this node answering its syncs).
    static func settings(for configuration: NodeConfiguration, origin: UInt64, policy: Policy) throws -> ReplicationSettings {
        var settings = ReplicationSettings()
        settings.site = try configuration.site?.settings(origin: origin)
        settings.policy = policy
        if let site = settings.site {
            // Refused at start, not at the first sync: a core would refuse every sync of a site
            // whose purposes the policy does not define.
            do {
                _ = try SiteHoldings(scope: site.scope, purposes: site.purposes, policy: policy)
            } catch {
                throw ConfigurationError("site.purposes: \(error)")
            }
        }
        settings.antiEntropyInterval = Int64(configuration.antiEntropyIntervalSeconds) * 1_000
        settings.replicas = configuration.replicas
        settings.maxOfflineWindow = try configuration.maxOfflineWindowMillis()
        settings.truncationInterval = Int64(configuration.logTruncationIntervalSeconds) * 1_000
        settings.forgetCompactionInterval = Int64(configuration.forgetCompactionIntervalSeconds) * 1_000
        // Forget records can go only once no message can be dated before them: with a maxEventAge.
        if let maxEventAge = try configuration.maxEventAgeMillis() {
            settings.forgetCompaction = ForgetCompactionPlan.Bounds(
                maxEventAge: maxEventAge, clockBound: configuration.maxClockOffsetMillis, maxOfflineWindow: settings.maxOfflineWindow)
        }
        return settings
    }

    /// `writer` runs a write on the node's one writer thread (`GroupCommitter.perform`); false
    /// once it is stopping.
    init(
        store: any ReplicaStore, origin: UInt64, configuration: NodeConfiguration, policy: Policy, keys: ClusterKeys, forgetKeySecret: [UInt8],
        log: Log, writer: @escaping @Sendable (@escaping @Sendable () -> Void) -> Bool
    ) throws {
        self.log = log
        self.origin = origin
        keyFile = configuration.clusterKeyFile
        let inbox = self.inbox
        let fingerprint = Crypto.hmacSHA256(key: forgetKeySecret, message: Array("kith forget-key fingerprint".utf8))
        transport = try PeerTransport(
            me: origin, address: configuration.gossip!, keys: keys, fingerprint: fingerprint, log: log
        ) { message, sender, address in inbox.add(.message(message, sender, address)) }
        let member = Member(
            id: origin, name: configuration.nodeName, address: transport.address, role: MemberRole(name: configuration.role)!,
            scoped: configuration.site != nil, incarnation: UInt64(unixMillis()))
        let transport = self.transport
        let settings = try Self.settings(for: configuration, origin: origin, policy: policy)
        var clockSettings = ClockSettings()
        clockSettings.maximumOffset = configuration.maxClockOffsetMillis
        let now = monotonicMillis()
        // Replicated writes are jobs of the node's one writer; what follows each comes back
        // through the inbox, so that only this thread touches the node.
        let write: StoreWriter = { write, then in
            let rest = Continuation(run: then)
            let accepted = writer {
                let result = Result { try write() }
                inbox.add(.written { try rest.run(try result.get()) })
            }
            if !accepted { throw NodeError.shuttingDown }
        }
        let node = try ClusterNode(
            store: store, me: member, seeds: configuration.seeds, settings: settings, clockSettings: clockSettings, startedAt: now,
            seed: UInt64.random(in: 0...UInt64.max), write: write
        ) { address, message in transport.send(message, to: address) }
        self.node = node
        publishedClock = Mutex(ClockState(check: node.clockCheck(now: now), peers: [], jumps: 0))
    }

    /// Starts replicating, advertising `api` as where this node's HTTP API answers.
    func start(api: String) {
        node.advertise(api: api)
        transport.start()
        let thread = Thread { [self] in run() }
        thread.name = "kith-replication"
        thread.start()
    }

    /// Leaves the cluster (tells the peers) and stops.
    func stop() {
        inbox.add(.call { [node] in node.leave() })
        Thread.sleep(forTimeInterval: 0.1)  // let the leave notes go out
        inbox.close()
        finished.wait()
        deadlines.stop()
        transport.stop()
    }

    var clock: ClockState { publishedClock.withLock { $0 } }
    var members: [Member] { publishedMembers.withLock { $0 } }

    var links: PeerLinkTotals {
        let metrics = transport.metrics
        var totals = PeerLinkTotals()
        totals.framesSent = metrics.framesSent.load(ordering: .relaxed)
        totals.framesReceived = metrics.framesReceived.load(ordering: .relaxed)
        totals.bytesSent = metrics.bytesSent.load(ordering: .relaxed)
        totals.bytesReceived = metrics.bytesReceived.load(ordering: .relaxed)
        totals.framesDropped = metrics.framesDropped.load(ordering: .relaxed)
        totals.connectionsRefused = metrics.connectionsRefused.load(ordering: .relaxed)
        totals.closedConnections = metrics.closedConnections.withLock { $0.totals }
        return totals
    }

    func after(millis: Int, _ body: @escaping @Sendable () -> Void) -> Bool { deadlines.after(millis: millis, body) }

    /// A peer's message, as the transport hands it over: handled in turn on the replication thread.
    func deliver(_ message: PeerMessage, from sender: UInt64, address: String) {
        inbox.add(.message(message, sender, address))
    }

    /// The writer committed: push the new changes now rather than at the next tick.
    func committed() {
        inbox.add(.committed)
    }

    /// Calls `completion` once this node's own changes through `originSequence` are held by as
    /// many replicas as `concern` asks, or at `timeoutMillis` with how many held them.
    func awaitReplicas(
        ownThrough originSequence: UInt64, concern: WriteConcern, timeoutMillis: Int64,
        completion: @escaping @Sendable (_ held: Int, _ required: Int, _ met: Bool) -> Void
    ) {
        wait(.replicas(ownThrough: originSequence, concern: concern), timeoutMillis: timeoutMillis) { outcome in
            guard case .replicas(let held, let required, let met) = outcome else { preconditionFailure("a replica wait ended \(outcome)") }
            completion(held, required, met)
        }
    }

    /// Calls `completion` with the origins of `token` this node still lacks (none: satisfied)
    /// once it holds everything the token covers, or after `timeoutMillis`. Meanwhile it pulls
    /// from every reachable peer, so that a change it lacks comes now rather than at the next
    /// anti-entropy round.
    func awaitSession(_ token: VersionVector, timeoutMillis: Int64, completion: @escaping @Sendable (_ missing: [UInt64]) -> Void) {
        wait(.session(token), timeoutMillis: timeoutMillis) { outcome in
            guard case .session(let missing) = outcome else { preconditionFailure("a session wait ended \(outcome)") }
            completion(missing)
        }
    }

    /// Calls `completion` once this node has pulled everything from as many replicas as
    /// `concern` asks (itself included), each answering a pull sent now — so the node then holds
    /// every write those replicas acknowledged before — or at `timeoutMillis` with how many did.
    func awaitReplicaReads(
        _ concern: WriteConcern, timeoutMillis: Int64, completion: @escaping @Sendable (_ answered: Int, _ required: Int, _ met: Bool) -> Void
    ) {
        wait(.replicaReads(concern), timeoutMillis: timeoutMillis) { outcome in
            guard case .replicas(let answered, let required, let met) = outcome else { preconditionFailure("a replica read ended \(outcome)") }
            completion(answered, required, met)
        }
    }

    /// Hands `wait` to the node; `completion` runs on the replication thread with its outcome,
    /// by the deadline at the latest (or at once, unmet, when the node is stopping).
    private func wait(_ wait: ConsistencyWait, timeoutMillis: Int64, completion: @escaping @Sendable (ConsistencyOutcome) -> Void) {
        let deadline = monotonicMillis() + timeoutMillis
        if !inbox.add(.wait(wait, deadline: deadline, completion: completion)) { completion(wait.unmet(replicas: 1, origin: origin)) }
    }

    /// Answers the callers whose waits the node has decided: met, or out of time.
    private func settleWaits(now: Int64) {
        for (number, outcome, error) in node.settleWaits(now: now) {
            if let error { log(.error, "a wait ended unmet: its state could not be read", [("error", .string("\(error)"))]) }
            waitCompletions.removeValue(forKey: number)?(outcome)
        }
    }

    /// The rest of a replicated write: it holds the node, so only the replication thread runs it.
    private struct Continuation: @unchecked Sendable {
        let run: (ReplicatedWrite) throws -> Void
    }

    /// Runs `body` on the replication thread and calls `completion` with its result (operator
    /// calls, metrics), or with `ReplicationBusy` once `timeoutMillis` have passed without the
    /// thread running it, whichever comes first. `completion` runs once, on either thread: an
    /// event loop hands it a responder and goes on, it never waits.
    func call<T: Sendable>(
        timeoutMillis: Int = 2_000, _ body: @escaping (ClusterNode) throws -> T,
        completion: @escaping @Sendable (Result<T, Error>) -> Void
    ) {
        let once = Once()
        let accepted = inbox.add(
            .call { [node] in
                let result = Result { try body(node) }
                if once.claim() { completion(result) }
            })
        guard accepted else { return completion(.failure(NodeError.shuttingDown)) }
        deadlines.after(millis: timeoutMillis) {
            if once.claim() { completion(.failure(ReplicationBusy(millis: timeoutMillis))) }
        }
    }

    private func run() {
        var nextTick: Int64 = 0
        var nextKeyCheck: Int64 = 0
        while true {
            _ = inbox.wakeup.wait(timeout: .now() + .milliseconds(50))
            let (work, stopped) = inbox.withItems { items, closed in
                defer { items.removeAll() }
                return (items, closed)
            }
            // Timers and deadlines run on the monotonic clock (a wall clock set back must not stall
            // them); the wall clock only stamps membership messages, for measuring offsets.
            let now = monotonicMillis()
            let wall = unixMillis()
            // Each item on its own: one that fails (a refused document state, a store error)
            // must not drop the items after it, whose callers wait for an answer.
            for item in work {
                do {
                    try handle(item, now: now, wall: wall)
                } catch {
                    log(.error, "replication step failed", [("error", .string("\(error)"))])
                }
            }
            if now >= nextTick {
                nextTick = now + 50
                do { try node.tick(now: now, wall: wall) } catch { log(.error, "replication tick failed", [("error", .string("\(error)"))]) }
                publishClock(now: now)
            }
            settleWaits(now: now)
            if now >= nextKeyCheck {
                nextKeyCheck = now + 5_000
                reloadKeys()
            }
            if stopped { break }
        }
        for (number, outcome) in node.endWaits() { waitCompletions.removeValue(forKey: number)?(outcome) }
        finished.signal()
    }

    private func handle(_ item: Work, now: Int64, wall: Int64) throws {
        switch item {
        case .message(let message, let sender, let address): try node.receive(message, from: sender, address: address, now: now, wall: wall)
        case .committed: try node.pushOwnChanges()
        case .call(let body): body()
        case .written(let rest): try rest()
        case .wait(let wait, let deadline, let completion):
            lastWait += 1
            let number = lastWait
            do {
                guard let outcome = try node.startWait(number, wait, deadline: deadline, now: now) else {
                    return waitCompletions[number] = completion
                }
                completion(outcome)
            } catch {
                // Whatever the node took on is answered by `settleWaits`; a wait it did not
                // take is answered here, unmet.
                if node.isWaiting(number) { waitCompletions[number] = completion } else { completion(node.unmet(wait)) }
                throw error
            }
        }
    }

    /// Publishes the clock check and says so in the log when it changes, and every 30 s while
    /// writes are refused (loudly: the operator has to set the clock right).
    private func publishClock(now: Int64) {
        let check = node.clockCheck(now: now)
        let peers = node.membership.members.values.sorted { $0.name < $1.name }.compactMap { member in
            node.clockOffsets.clock(of: member.id).map { (name: member.name, clock: $0) }
        }
        let jumps = node.clockOffsets.jumps
        publishedClock.withLock { $0 = ClockState(check: check, peers: peers, jumps: jumps) }
        let members = node.membership.all
        publishedMembers.withLock { $0 = members }
        let changed = lastClockLog?.verdict != check.verdict
        guard changed || (!check.allowsWrites && now - (lastClockLog?.at ?? .min / 2) >= 30_000) else { return }
        // A node that starts unmeasured measures within a round trip or two: only say so if it lasts.
        if lastClockLog == nil && check.verdict != .offsetTooLarge { return lastClockLog = (check.verdict, now) }
        lastClockLog = (check.verdict, now)
        var fields: [(String, JSONValue)] = [
            ("verdict", .string(check.verdict.rawValue)), ("max_offset_ms", .number(JSONNumber(check.maximumOffset))),
        ]
        if let offset = check.offset { fields.append(("offset_ms", .number(JSONNumber(offset)))) }
        log(check.allowsWrites ? .info : .error, check.allowsWrites ? "clock within bound: writes accepted" : check.explanation, fields)
    }

    /// Re-reads the cluster key file (rotation without restart). A file that cannot be read or
    /// parsed keeps the keys in use, and is logged once until it reads again.
    private func reloadKeys() {
        guard let keyFile else { return }
        do {
            let (keys, sending) = try ClusterKeys.parse(try String(contentsOfFile: keyFile, encoding: .utf8))
            transport.keys.replace(keys: keys, sending: sending)
            keyFileFailing = false
        } catch {
            if !keyFileFailing { log(.error, "cluster key file not reloaded; the keys in use stay", [("error", .string("\(error)"))]) }
            keyFileFailing = true
        }
    }
}

/// A call into the replication thread not run within its deadline (the thread is busy or stuck).
struct ReplicationBusy: Error, CustomStringConvertible {
    var millis: Int
    var description: String { "the replication thread did not answer within \(millis) ms" }
}

/// Lets exactly one of several racing paths complete a waiter.
final class Once: Sendable {
    private let done = Atomic<Bool>(false)

    /// True for the first caller only.
    func claim() -> Bool { done.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged }
}

/// Milliseconds of a clock that never jumps (CLOCK_MONOTONIC), to notice the wall clock jumping.
func monotonicMillis() -> Int64 { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) }
