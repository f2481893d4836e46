import KithCRDT
import KithCluster
import KithCrypto
import KithProfile
import KithReplication
import KithStore
import KithTestSupport

/// A whole Kith cluster in one process: real `ClusterNode`s over in-memory stores, a seeded
/// network that delays, drops, duplicates, reorders, partitions and clogs, clocks that are
/// offset and drift (one of them hours fast, if asked), and crashes. Every message crosses the
/// real payload codec. Same seed, same run.
final class Simulation {
    struct Faults {
        var lossPercent = 0
        var duplicatePercent = 0
        var maximumDelay: Int64 = 20
    }

    /// A simulated machine: its store survives crashes (it stands for the disk), its
    /// `ClusterNode` (all soft state) does not.
    final class Machine {
        let index: Int
        let member: Member
        /// Replaced, with the same data, when the machine restarts under other settings.
        var store: MemoryProfileStore
        /// The machine's clock: `skew` ms off, running `drift` parts per million fast or slow.
        var skew: Int64
        let drift: Int64
        var node: ClusterNode?
        var nextTick: Int64 = 0
        /// Waits the node has decided (`ClusterNode.settleWaits`), by number, until a scenario
        /// takes them; and the waits it was given, so that numbers stay unique.
        var outcomes: [UInt64: ConsistencyOutcome] = [:]
        var lastWait: UInt64 = 0
        /// Crashes so far: a wait started before one is never answered (its caller sees a reset).
        var crashes = 0
        /// The node's writes queued for its one writer, in order, each with when it commits.
        /// A crash loses those not yet committed (their senders were never answered).
        var writes: [(at: Int64, write: () throws -> ReplicatedWrite, then: (ReplicatedWrite) throws -> Void)] = []
        /// Client messages committed with their sync deferred, waiting for the sync at `syncAt`
        /// to be answered; then, answered, until a scenario takes them (`takeSyncedMessages`).
        var unsynced: [(delta: ProfileDelta, at: Int64)] = []
        var syncAt: Int64?
        var synced: [(delta: ProfileDelta, at: Int64)] = []

        init(index: Int, member: Member, store: MemoryProfileStore, skew: Int64, drift: Int64) {
            self.index = index
            self.member = member
            self.store = store
            self.skew = skew
            self.drift = drift
        }
    }

    struct Delivery {
        var at: Int64
        var order: Int
        var from: Int
        var to: Int
        var tag: UInt8
        var payload: [UInt8]
    }

    let seed: UInt64
    /// Whether client messages may be committed as a node's group commit does, with LMDB's second
    /// sync deferred to a sync thread (`commitDeferringSync`), and whether a crash may be an
    /// operating-system crash that loses what was not synced yet.
    var defersSyncs = false
    var random: SplitMix64
    var now: Int64 = 0
    var machines: [Machine] = []
    var faults = Faults()
    /// Directed links that drop everything: (from, to).
    var blocked: Set<[Int]> = []
    /// Directed links with very long delays until the given time.
    var clogged: [[Int]: Int64] = [:]
    private var queue: [Delivery] = []
    private var order = 0
    var delivered = 0
    var bytesDelivered = 0
    static let secret = [UInt8](repeating: 9, count: 32)
    static let membershipSettings: MembershipSettings = {
        var settings = MembershipSettings()
        settings.probeInterval = 200
        settings.probeTimeout = 80
        settings.reconnectInterval = 1_000
        return settings
    }()
    static let replicationSettings: ReplicationSettings = {
        var settings = ReplicationSettings()
        settings.pullInterval = 300
        settings.pullTimeout = 1_000
        settings.pullBudget = 16 * 1024
        settings.scanLimit = 64
        settings.antiEntropyInterval = 2_000
        settings.antiEntropyTimeout = 1_000
        settings.digestNodesPerRequest = 16
        settings.documentBudget = 16 * 1024
        // Logs are truncated as members read them, in small chunks, every scenario long.
        settings.truncationInterval = 1_500
        settings.truncationChunk = 8
        // Forget compaction (when a scenario configures it): a pass every 1.5 s, 5 records a step.
        settings.forgetCompactionInterval = 1_500
        settings.forgetCompactionScan = 5
        // Scoped sites report what they hold in pages of 7 documents: every report of a few
        // customers goes in several syncs.
        settings.siteReportPage = 7
        // Cores look again at every document a site reports every 10 syncs (60 by default), and
        // after a first sweep, sweep one identifier a sync: what reaches a site between those
        // comes by the cores' logs.
        settings.siteFullCheck = 10
        settings.siteSweep = 1
        return settings
    }()
    static let clockSettings = ClockSettings()
    let replicationSettings: ReplicationSettings
    /// Scoped sites' settings, by machine index.
    private(set) var siteSettings: [Int: SiteSettings] = [:]

    /// `antiEntropy` false leaves repair to the change logs alone, so that a fault in log
    /// replication is not hidden by tree comparisons. `fastClock`: the second machine's clock
    /// runs two hours ahead (it must refuse to date writes; nothing it holds may swallow others').
    /// `maxOfflineWindow`: how long a silent member holds log truncation back (30 days unless given).
    /// `forgetCompaction`: the bounds under which forget records are compacted (none unless given).
    /// `sites`: the last `sites.count` edges are scoped sites with these settings.
    init(
        seed: UInt64, nodes: Int, edges: Int, antiEntropy: Bool = true, fastClock: Bool = false, maxOfflineWindow: Int64? = nil,
        forgetCompaction: ForgetCompactionPlan.Bounds? = nil, sites: [SiteSettings] = []
    ) throws {
        precondition(sites.count <= edges, "\(sites.count) sites but \(edges) edges")
        self.seed = seed
        var settings = Self.replicationSettings
        if !antiEntropy { settings.antiEntropyInterval = 0 }
        if let maxOfflineWindow { settings.maxOfflineWindow = maxOfflineWindow }
        settings.forgetCompaction = forgetCompaction
        replicationSettings = settings
        random = SplitMix64(seed: seed)
        for index in 0..<nodes {
            let role: MemberRole = index >= nodes - edges ? .edge : .core
            if index >= nodes - sites.count { siteSettings[index] = sites[index - (nodes - sites.count)] }
            let member = Member(
                id: UInt64(index + 1), name: "n\(index + 1)", address: "n\(index + 1)", role: role, scoped: siteSettings[index] != nil)
            let store = MemoryProfileStore(configuration: StoreConfiguration(node: member.id, forgetKeySecret: Self.secret))
            var skew = Int64(random.below(901)) - 450
            if fastClock && index == 1 { skew += 7_200_000 }
            let drift = Int64(random.below(201)) - 100
            machines.append(Machine(index: index, member: member, store: store, skew: skew, drift: drift))
        }
        for machine in machines { try start(machine) }
    }

    /// True time 0 of the simulation, as a Unix time.
    static let epoch: Int64 = 1_760_000_000_000

    func clock(_ machine: Machine) -> Int64 { Self.epoch + now + machine.skew + now * machine.drift / 1_000_000 }

    func start(_ machine: Machine) throws {
        let seeds = machines.filter { $0.member.role == .core && $0 !== machine }.prefix(2).map(\.member.address)
        let index = machine.index
        var me = machine.member
        me.incarnation = UInt64(clock(machine))
        var settings = replicationSettings
        settings.site = siteSettings[index]
        machine.node = try ClusterNode(
            store: machine.store, me: me, seeds: Array(seeds), membershipSettings: Self.membershipSettings,
            settings: settings, clockSettings: Self.clockSettings, startedAt: clock(machine),
            seed: seed &+ UInt64(index) &* 7919 &+ UInt64(now),
            write: { [unowned self, unowned machine] write, then in
                // As on a node: the write waits its turn at the one writer, commits 1–20 ms
                // later, and the node goes on meanwhile; the rest runs when it has committed.
                let at = max(machine.writes.last?.at ?? now, now) + 1 + Int64(random.below(20))
                machine.writes.append((at, write, then))
            }
        ) { [unowned self] address, message in
            self.transmit(from: index, to: Int(address.dropFirst())! - 1, message)
        }
        machine.nextTick = now
        // Opening a store syncs what a stopped process left unsynced (LMDBProfileStore.init).
        machine.store.synchronize()
    }

    /// Commits a client's message as group commit does: its sync deferred, the sync thread
    /// making it durable 1–10 ms later, and only then is it answered (`takeSyncedMessages`).
    func commitDeferringSync(_ delta: ProfileDelta, at machine: Machine) throws {
        try machine.store.applyDeferringSync([delta])
        machine.unsynced.append((delta, now))
        if machine.syncAt == nil { machine.syncAt = now + 1 + Int64(random.below(10)) }
    }

    /// The client messages answered since the last call, with when they were committed and where.
    func takeSyncedMessages() -> [(delta: ProfileDelta, at: Int64, machine: Int)] {
        defer { for machine in machines { machine.synced = [] } }
        return machines.flatMap { machine in machine.synced.map { ($0.delta, $0.at, machine.index) } }
    }

    private func synchronize(_ machine: Machine) throws {
        machine.store.synchronize()
        machine.synced += machine.unsynced
        machine.unsynced = []
        machine.syncAt = nil
        // As a node does once a group is answered.
        try machine.node?.pushOwnChanges()
    }

    /// Stops `machine` and starts it again over the same data under `rules`, bringing its
    /// profiles under them first, as `kith serve` does when its configured rules change.
    /// Restarts a scoped site under other settings (its configuration changed).
    func restart(_ machine: Machine, as site: SiteSettings) throws {
        precondition(siteSettings[machine.index] != nil, "\(machine.member.name) is not a scoped site")
        crash(machine)
        siteSettings[machine.index] = site
        try start(machine)
    }

    func restart(_ machine: Machine, under rules: IdentityRules) throws {
        crash(machine)
        machine.store = MemoryProfileStore(
            configuration: StoreConfiguration(node: machine.member.id, forgetKeySecret: Self.secret, profile: ProfileConfiguration(rules: rules)),
            copying: machine.store)
        while try !machine.store.reevaluateIdentity(buckets: 128) {}
        try start(machine)
    }

    /// The process stops: queued writes are lost to their senders. Messages committed but not
    /// answered stay (in the page cache; the restart syncs them), and their clients' retries are
    /// answered as duplicates: they count as acknowledged. `losingUnsynced`: the operating system
    /// stops too, and commits not synced yet are gone, unanswered (their clients give up).
    func crash(_ machine: Machine, losingUnsynced: Bool = false) {
        if losingUnsynced { machine.store.loseUnsyncedCommits() } else { machine.synced += machine.unsynced }
        machine.unsynced = []
        machine.syncAt = nil
        machine.node = nil
        machine.writes = []
        machine.outcomes = [:]
        machine.crashes += 1
    }

    /// A caller's wait at `machine`, as the node's shell starts one (deadline `timeout` ms on the
    /// machine's clock): the outcome if decided at once, else the wait's number; the node
    /// decides it within the deadline and `run` puts it in `machine.outcomes`.
    func startWait(_ wait: ConsistencyWait, at machine: Machine, timeout: Int64 = 2_000) throws -> (number: UInt64, outcome: ConsistencyOutcome?) {
        guard let node = machine.node else { preconditionFailure("a wait at \(machine.member.name), which is down") }
        machine.lastWait += 1
        let outcome = try node.startWait(machine.lastWait, wait, deadline: clock(machine) + timeout, now: clock(machine))
        return (machine.lastWait, outcome)
    }

    /// Runs until the wait numbered `number` at `machine` is decided; nil if the machine crashed.
    func awaitOutcome(_ number: UInt64, at machine: Machine) throws -> ConsistencyOutcome? {
        let crashes = machine.crashes
        while machine.outcomes[number] == nil && machine.crashes == crashes { try run(until: now + 20) }
        return machine.outcomes.removeValue(forKey: number)
    }

    /// Collects the waits each node decides now.
    private func settleWaits() {
        for machine in machines {
            guard let node = machine.node, node.waitsInProgress > 0 else { continue }
            for (number, outcome, error) in node.settleWaits(now: clock(machine)) {
                precondition(error == nil, "\(machine.member.name) could not read a wait's state: \(error!)")
                machine.outcomes[number] = outcome
            }
        }
    }

    /// The node's own rule on whether its clock may date a write now (a crashed machine takes none).
    func acceptsWrites(_ machine: Machine) -> Bool {
        machine.node?.clockCheck(now: clock(machine)).allowsWrites ?? false
    }

    private func transmit(from: Int, to: Int, _ message: PeerMessage) {
        if blocked.contains([from, to]) || random.chance(faults.lossPercent) { return }
        let payload = message.encodePayload()
        var delay = 1 + Int64(random.below(Int(faults.maximumDelay)))
        if let until = clogged[[from, to]], until > now { delay += 500 + Int64(random.below(1_500)) }
        let copies = random.chance(faults.duplicatePercent) ? 2 : 1
        for copy in 0..<copies {
            order += 1
            queue.append(
                Delivery(
                    at: now + delay + Int64(copy) * Int64(random.below(50)), order: order, from: from, to: to, tag: message.tag, payload: payload))
        }
    }

    /// Runs the cluster until `end` (simulated ms), ticking every node every 50 ms of its time.
    func run(until end: Int64, between: (Simulation) throws -> Void = { _ in }) throws {
        while now < end {
            let nextTick = machines.compactMap { $0.node == nil ? nil : $0.nextTick }.min() ?? end
            queue.sort { ($0.at, $0.order) < ($1.at, $1.order) }
            let nextDelivery = queue.first?.at ?? end
            let nextWrite = machines.compactMap { $0.node == nil ? nil : $0.writes.first?.at }.min() ?? end
            let nextSync = machines.compactMap { $0.node == nil ? nil : $0.syncAt }.min() ?? end
            now = max(now, min(nextTick, nextDelivery, nextWrite, nextSync, end))
            if let machine = machines.first(where: { $0.node != nil && ($0.syncAt ?? .max) <= now }) {
                try synchronize(machine)
                settleWaits()
            } else if let machine = machines.first(where: { $0.node != nil && ($0.writes.first?.at ?? .max) <= now }) {
                let (_, write, then) = machine.writes.removeFirst()
                try then(try write())
                settleWaits()
            } else if let delivery = queue.first, delivery.at <= now {
                queue.removeFirst()
                try deliver(delivery)
                settleWaits()
            } else {
                for machine in machines where machine.node != nil && machine.nextTick <= now {
                    machine.nextTick = now + 50
                    try machine.node!.tick(now: clock(machine))
                }
                settleWaits()
                try between(self)
            }
        }
    }

    private func deliver(_ delivery: Delivery) throws {
        let machine = machines[delivery.to]
        guard let node = machine.node else { return }
        delivered += 1
        bytesDelivered += delivery.payload.count
        let message = try PeerMessage(tag: delivery.tag, payload: delivery.payload)
        try node.receive(message, from: machines[delivery.from].member.id, address: machines[delivery.from].member.address, now: clock(machine))
    }

    /// Now and then (2 % of calls): a partition (symmetric or one-way) starts or ends, a link
    /// clogs, a node crashes or restarts.
    func injectFault() {
        guard random.chance(2) else { return }
        let count = machines.count
        switch random.below(5) {
        case 0:
            let side = Set((0..<count).filter { _ in random.chance(50) })
            for a in 0..<count { for b in 0..<count where side.contains(a) != side.contains(b) { blocked.insert([a, b]) } }
        case 1: blocked.insert([random.below(count), random.below(count)])
        case 2: blocked = []
        case 3: clogged[[random.below(count), random.below(count)]] = now + 3_000
        default:
            let machine = machines[random.below(count)]
            if machine.node == nil {
                try? start(machine)
            } else {
                crash(machine, losingUnsynced: defersSyncs && random.chance(50))
            }
        }
    }

    /// Removes every fault and brings every machine up.
    func heal() throws {
        faults = Faults()
        blocked = []
        clogged = [:]
        for machine in machines where machine.node == nil { try start(machine) }
    }

    /// Heals (`heal`), then runs in steps of 2 s from `start` until every replica holds the
    /// same content, or until `limit` of simulated time.
    func healAndSettle(from start: Int64, limit: Int64 = 60_000) throws {
        try heal()
        var settled = start
        repeat {
            settled += 2_000
            try run(until: settled)
        } while try Set(machines.filter(\.member.holdsEverything).map { try $0.store.contentDigest() }).count > 1 && settled < limit
    }

    var isQuiet: Bool { queue.isEmpty }
}

/// The rows of `store`'s documents table (what a scoped site holds, compared row for row).
func documentRows(_ store: MemoryProfileStore) throws -> [[UInt8]: [UInt8]] {
    try replicatedRows(store).filter { $0.key.first == UInt8(Table.documents.rawValue) }
}

/// Every replicated row of `store` (documents and forget set), keyed by table and key: to list
/// the rows two replicas differ in when a run fails.
func replicatedRows(_ store: MemoryProfileStore) throws -> [[UInt8]: [UInt8]] {
    try store.read { reader in
        var rows: [[UInt8]: [UInt8]] = [:]
        for table in [Table.documents, .forget] {
            try reader.scan(table, prefix: []) { key, value in
                rows[[UInt8(table.rawValue)] + key] = value
                return .next
            }
        }
        return rows
    }
}
