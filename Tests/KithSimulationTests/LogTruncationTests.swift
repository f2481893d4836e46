import Foundation
import KithCRDT
import KithCluster
import KithJSON
import KithProfile
import KithReplication
import KithTestSupport
import Testing

@testable import KithStore

/// The rule that decides which log entries may go, on its own.
@Suite("Log truncation plan")
struct LogTruncationPlanTests {
    static func member(_ id: UInt64, _ status: MemberStatus = .alive, role: MemberRole = .core) -> Member {
        var member = Member(id: id, name: "n\(id)", address: "n\(id)", role: role)
        member.status = status
        return member
    }

    static let log = LogExtent(truncatedThrough: 10, last: 100)
    static let day: Int64 = 86_400_000

    func plan(_ members: [Member], _ contacts: [UInt64: LogTruncationPlan.Contact], now: Int64 = 50 * day) -> LogTruncationPlan {
        LogTruncationPlan.plan(log: Self.log, members: members, contacts: contacts, since: 0, now: now, maxOfflineWindow: 30 * Self.day)
    }

    @Test func everyMemberThatCountsHoldsTheLogAtWhatItRead() {
        let now = 50 * Self.day
        let contacts: [UInt64: LogTruncationPlan.Contact] = [
            2: .init(lastHeard: now - 1_000, readThrough: 80), 3: .init(lastHeard: now - 5 * Self.day, readThrough: 40),
        ]
        let plan = plan([Self.member(2), Self.member(3, .dead, role: .edge)], contacts)
        #expect(plan.through == 40 && plan.truncates(Self.log))
        #expect(plan.readers.map(\.holdsBack) == [true, true] && plan.readers.map(\.readThrough) == [80, 40])
    }

    @Test func aMemberSilentPastTheWindowNoLongerCounts() {
        let now = 50 * Self.day
        let contacts: [UInt64: LogTruncationPlan.Contact] = [
            2: .init(lastHeard: now, readThrough: 90), 3: .init(lastHeard: now - 31 * Self.day, readThrough: 12),
        ]
        let plan = plan([Self.member(2), Self.member(3, .dead, role: .edge)], contacts)
        #expect(plan.through == 90)
        #expect(plan.readers.first { $0.id == 3 }?.holdsBack == false && plan.readers.first { $0.id == 3 }?.silentFor == 31 * Self.day)
        // Exactly at the window it still counts.
        let atTheWindow = self.plan([Self.member(3)], [3: .init(lastHeard: now - 30 * Self.day, readThrough: 12)])
        #expect(atTheWindow.through == 12)
    }

    /// A member not heard from since this node started holds the log where it is, until it has
    /// been silent for the window counted from the start.
    @Test func aMemberNotHeardSinceTheStartHoldsTheLogWhereItIs() {
        #expect(plan([Self.member(2)], [:], now: 29 * Self.day).through == Self.log.truncatedThrough)
        #expect(plan([Self.member(2)], [:], now: 31 * Self.day).through == Self.log.last)
        // Heard, but it has not pulled: the same.
        #expect(plan([Self.member(2)], [2: .init(lastHeard: 49 * Self.day, readThrough: nil)]).through == Self.log.truncatedThrough)
    }

    /// Members that left never count; but knowing no member at all (a node just started, before
    /// gossip found anyone) keeps the log whole.
    @Test func membersThatLeftNeverCountAndKnowingNoneKeepsTheLog() {
        let plan = plan([Self.member(2, .left)], [2: .init(lastHeard: 50 * Self.day, readThrough: 11)])
        #expect(plan.through == Self.log.last && plan.readers.isEmpty)
        #expect(self.plan([], [:]).through == Self.log.truncatedThrough)
    }

    @Test func thePlanNeverGoesBehindWhatIsAlreadyTruncated() {
        let plan = plan([Self.member(2)], [2: .init(lastHeard: 50 * Self.day, readThrough: 3)])
        #expect(plan.through == Self.log.truncatedThrough && !plan.truncates(Self.log))
    }
}

/// A member away for longer than `maxOfflineWindow` while everyone writes (it too). The others
/// truncate their logs past what it read; it truncates its own, its peers being silent to it.
/// When it comes back every pull finds the log gone, each side brings the other up to date by a
/// tree comparison, erasures first, and every checker of the main simulation holds.
func runAwayPastTheWindowScenario(seed: UInt64) throws -> (failures: [String], truncatedPast: Bool, resyncs: Int) {
    var setup = SplitMix64(seed: seed ^ 0x7A)
    // Periodic tree comparisons off: what the log no longer holds comes back by resync alone.
    let sim = try Simulation(seed: seed, nodes: 3 + setup.below(2), edges: setup.below(2), antiEntropy: false, maxOfflineWindow: 4_000)
    sim.faults = .init(lossPercent: setup.below(10), duplicatePercent: setup.below(10), maximumDelay: 5 + Int64(setup.below(40)))
    var generator = WorkloadGenerator(seed: seed, customers: 20)
    generator.sendsSentAt = true
    var ledger = Ledger()
    let parser = SegmentMessageParser(sources: WorkloadGenerator.identifierSources)
    let away = sim.machines.count - 1 - setup.below(2)

    try sim.run(until: 3_000) { sim in try clientStep(sim, &generator, parser, &ledger) }
    for other in sim.machines.indices where other != away {
        sim.blocked.insert([away, other])
        sim.blocked.insert([other, away])
    }
    try sim.run(until: 14_000) { sim in try clientStep(sim, &generator, parser, &ledger) }
    let awayStore = sim.machines[away].store
    let truncatedPast = try sim.machines.filter { $0.index != away }.contains { machine in
        try machine.store.logExtent().truncatedThrough > awayStore.cursor(of: machine.member.id)
    }
    try sim.healAndSettle(from: 14_000)
    let resyncs = sim.machines.compactMap { $0.node?.counters.resyncsCompleted }.reduce(0, +)
    return (try check(sim, ledger, seed: seed), truncatedPast, resyncs)
}

@Suite("Log truncation in the simulation")
struct LogTruncationSimulationTests {
    @Test func aMemberAwayPastTheWindowComesBackWithoutTheLog() throws {
        var truncatedPast = 0
        var resyncs = 0
        try expectEverySeedPasses(ci: 40, replay: "LogTruncationSimulationTests") { seed in
            let (failures, past, count) = try runAwayPastTheWindowScenario(seed: seed)
            if past { truncatedPast += 1 }
            resyncs += count
            return failures
        }
        #expect(truncatedPast > 0 && resyncs > 0, "logs were truncated past the away member (\(truncatedPast) seeds), and resyncs ran (\(resyncs))")
    }

    /// In every scenario logs are truncated as members read them: the main scenario's nodes end
    /// with their logs truncated, and their checkers hold (`SimulationTests`).
    @Test func logsShrinkWhileEveryoneReads() throws {
        let sim = try Simulation(seed: 5, nodes: 3, edges: 1)
        var generator = WorkloadGenerator(seed: 5, customers: 20)
        var ledger = Ledger()
        let parser = SegmentMessageParser(sources: WorkloadGenerator.identifierSources)
        try sim.run(until: 8_000) { sim in try clientStep(sim, &generator, parser, &ledger) }
        try sim.healAndSettle(from: 8_000)
        try sim.run(until: sim.now + 4_000)
        for machine in sim.machines {
            let extent = try machine.store.logExtent()
            #expect(extent.truncatedThrough > 0 && extent.span < extent.last / 4, "\(machine.member.name): \(extent)")
        }
        #expect(try check(sim, ledger, seed: 5).isEmpty)
    }
}

/// A store whose first log truncation fails: the rest is the memory store's.
final class StoreFailingOneTruncation: ReplicaStore, @unchecked Sendable {
    let store: MemoryProfileStore
    var failuresLeft = 1
    init(_ store: MemoryProfileStore) { self.store = store }
    struct Failure: Error {}

    func truncateLog(through sequence: UInt64, limit: Int) throws -> Int {
        if failuresLeft > 0 {
            failuresLeft -= 1
            throw Failure()
        }
        return try store.truncateLog(through: sequence, limit: limit)
    }
    func changes(after sequence: UInt64, limit: Int) throws -> [ChangeEntry] { try store.changes(after: sequence, limit: limit) }
    func applyReplicated(_ entries: [ChangeEntry], from peer: UInt64, through position: UInt64?) throws -> Int {
        try store.applyReplicated(entries, from: peer, through: position)
    }
    func applyPushes(_ pushes: [PushedChanges], from peer: UInt64) throws -> (changed: Int, refused: Int) {
        try store.applyPushes(pushes, from: peer)
    }
    func entriesAhead(after sequence: UInt64, limit: Int) throws -> [ChangeEntry] { try store.entriesAhead(after: sequence, limit: limit) }
    func applyAhead(_ entry: ChangeEntry) throws { try store.applyAhead(entry) }
    func versionVector() throws -> VersionVector { try store.versionVector() }
    func cursor(of peer: UInt64) throws -> UInt64 { try store.cursor(of: peer) }
    func contentDigest() throws -> [UInt8] { try store.contentDigest() }
    func logExtent() throws -> LogExtent { try store.logExtent() }
    func durableLogSequence() throws -> UInt64 { try store.durableLogSequence() }
    func erased(among forgetKeys: [[UInt8]]) throws -> Set<[UInt8]> { try store.erased(among: forgetKeys) }
    func resumeLog(from peer: UInt64, at position: UInt64) throws { try store.resumeLog(from: peer, at: position) }
    func digest(of node: [UInt8]) throws -> Digest128 { try store.digest(of: node) }
    func digestChildren(of node: [UInt8]) throws -> [DigestEntry] { try store.digestChildren(of: node) }
    func documentStates(for forgetKeys: [[UInt8]]) throws -> [DocumentState] { try store.documentStates(for: forgetKeys) }
    func join(_ states: [DocumentState]) throws -> Int { try store.join(states) }
    func forgetCompactionState() throws -> ForgetCompactionState { try store.forgetCompactionState() }
    func compactForgetRecords(horizon: Int64, held: VersionVector, trusted: Set<UInt64>, scan: Int, limit: Int) throws -> ForgetCompactionStep {
        try store.compactForgetRecords(horizon: horizon, held: held, trusted: trusted, scan: scan, limit: limit)
    }
    func clearForQuarantine(through floor: Int64, buckets: Int, identifiers: Int) throws -> Bool {
        try store.clearForQuarantine(through: floor, buckets: buckets, identifiers: identifiers)
    }
    func scopeComponent(of identifier: Identifier, withSeenBy: Bool) throws -> Scope.Component? {
        try store.scopeComponent(of: identifier, withSeenBy: withSeenBy)
    }
    func documentStates(of identifiers: [Identifier]) throws -> [DocumentState] { try store.documentStates(of: identifiers) }
    func identifiers(from position: BucketWalkPosition, buckets: Int, limit: Int) throws -> (identifiers: [Identifier], next: BucketWalkPosition) {
        try store.identifiers(from: position, buckets: buckets, limit: limit)
    }
    func heldDocuments() throws -> [HeldDocument] { try store.heldDocuments() }
    func lastCommit() throws -> UInt64 { try store.lastCommit() }
    func applySiteUpdate(components: [[DocumentState]], purge: [Identifier]) throws -> SiteUpdateOutcome {
        try store.applySiteUpdate(components: components, purge: purge)
    }
}

@Suite("Log truncation in a node")
struct LogTruncationNodeTests {
    /// A truncation that fails is counted and tried again at the next plan; it never stops
    /// truncation for good.
    @Test func aFailedTruncationIsTriedAgain() throws {
        let memory = MemoryProfileStore(configuration: StoreConfiguration(node: 1, forgetKeySecret: Simulation.secret))
        for n in 1...3 {
            _ = try memory.apply([
                try SegmentMessageParser().parse(try JSONParser.parse(Array(#"{"type":"identify","userId":"u-\#(n)"}"#.utf8)), receivedAt: 1)
            ])
        }
        let store = StoreFailingOneTruncation(memory)
        var settings = ReplicationSettings()
        settings.truncationInterval = 100
        let me = Member(id: 1, name: "n1", address: "n1", role: .core)
        let node = try ClusterNode(store: store, me: me, seeds: [], settings: settings, seed: 1) { _, _ in }
        // One member, which has read everything.
        let peer = Member(id: 2, name: "n2", address: "n2", role: .core)
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer])), from: 2, address: "n2", now: 0)
        try node.receive(.pull(cursor: 3, versions: VersionVector(), budget: 1_024, request: 1), from: 2, address: "n2", now: 10)
        try node.tick(now: 20)
        #expect(try node.counters.logTruncationsFailed == 1 && memory.logExtent().truncatedThrough == 0)
        try node.tick(now: 200)
        #expect(try node.counters.logRecordsTruncated == 3 && memory.logExtent().truncatedThrough == 3)
    }
}

/// Pushes that arrive while one of the same peer's is being written go together in the next
/// write, each still checked for a gap in order.
@Suite("Pushes written together")
struct PushBatchingTests {
    func entries(from origin: UInt64, _ sequences: ClosedRange<UInt64>) throws -> [ChangeEntry] {
        try sequences.map { n in
            let delta = try SegmentMessageParser().parse(
                try JSONParser.parse(Array(#"{"type":"identify","userId":"p-\#(n)","messageId":"m-\#(n)"}"#.utf8)), receivedAt: 1)
            return ChangeEntry(sequence: n, origin: origin, originSequence: n, change: .message(delta))
        }
    }

    @Test func aStoreAppliesPushesInOrderAndRefusesOneWithAGap() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 1, forgetKeySecret: Simulation.secret))
        let pushes = [
            PushedChanges(previous: 0, entries: try entries(from: 2, 1...2)),
            PushedChanges(previous: 5, entries: try entries(from: 2, 6...6)),  // 3 to 5 never arrived
            PushedChanges(previous: 2, entries: try entries(from: 2, 3...3)),
        ]
        let (changed, refused) = try store.applyPushes(pushes, from: 2)
        #expect(try changed == 3 && refused == 1 && store.versionVector()[2] == 3)
    }

    @Test func pushesArrivingDuringAWriteShareTheNext() throws {
        let memory = MemoryProfileStore(configuration: StoreConfiguration(node: 1, forgetKeySecret: Simulation.secret))
        // A writer that holds each write until the test runs it, as a busy writer thread does.
        final class HeldWrites: @unchecked Sendable {
            var queued: [() throws -> Void] = []
        }
        let held = HeldWrites()
        let me = Member(id: 1, name: "n1", address: "n1", role: .core)
        let node = try ClusterNode(
            store: memory, me: me, seeds: [], seed: 1,
            write: { write, then in held.queued.append { try then(try write()) } }
        ) { _, _ in }
        let peer = Member(id: 2, name: "n2", address: "n2", role: .core)
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer])), from: 2, address: "n2", now: 0)
        try node.receive(.push(previous: 0, entries: try entries(from: 2, 1...1)), from: 2, address: "n2", now: 1)
        try node.receive(.push(previous: 1, entries: try entries(from: 2, 2...2)), from: 2, address: "n2", now: 2)
        try node.receive(.push(previous: 2, entries: try entries(from: 2, 3...4)), from: 2, address: "n2", now: 3)
        #expect(held.queued.count == 1, "one write in flight; the later pushes wait for it")
        while !held.queued.isEmpty { try held.queued.removeFirst()() }
        #expect(node.counters.pushBatches == 2 && node.counters.changesApplied == 4 && node.counters.pushesRejected == 0)
        #expect(try memory.versionVector()[2] == 4)
    }
}
