import Foundation
import KithCRDT
import KithCluster
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
        var failed: [String] = []
        var truncatedPast = 0
        var resyncs = 0
        for seed in simulationSeeds(ci: 40) {
            let (failures, past, count) = try runAwayPastTheWindowScenario(seed: seed)
            if past { truncatedPast += 1 }
            resyncs += count
            if !failures.isEmpty {
                failed.append(
                    "seed \(seed): \(failures.prefix(3).joined(separator: "; "))\n  replay: KITH_SIM_SEED=\(seed) swift test --filter LogTruncationSimulationTests"
                )
            }
        }
        #expect(truncatedPast > 0 && resyncs > 0, "logs were truncated past the away member (\(truncatedPast) seeds), and resyncs ran (\(resyncs))")
        #expect(failed.isEmpty, "\(failed.count) seeds failed:\n\(failed.prefix(10).joined(separator: "\n"))")
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
