import Foundation
import KithCRDT
import KithCluster
import KithProfile
import KithReplication
import KithTestSupport
import Testing

@testable import KithStore

/// Tree comparisons in the cluster protocol. A node is cut off while everyone writes (it too);
/// then every other node loses its change log, as if truncated, so what the cut-off node missed
/// is in no log any more. After healing it must still converge — by comparing digest trees and
/// swapping document states — with every checker of the main simulation holding.
func runTruncatedLogScenario(seed: UInt64, antiEntropy: Bool = true) throws -> (failures: [String], repaired: Int) {
    var setup = SplitMix64(seed: seed ^ 0xAE)
    let sim = try Simulation(seed: seed, nodes: 3 + setup.below(3), edges: setup.below(2), antiEntropy: antiEntropy)
    sim.faults = .init(lossPercent: setup.below(10), duplicatePercent: setup.below(10), maximumDelay: 5 + Int64(setup.below(40)))
    var generator = WorkloadGenerator(seed: seed, customers: 20)
    generator.sendsSentAt = true
    var ledger = Ledger()
    let parser = SegmentMessageParser(sources: WorkloadGenerator.identifierSources)
    let isolated = setup.below(sim.machines.count)

    try sim.run(until: 4_000) { sim in try clientStep(sim, &generator, parser, &ledger) }
    for other in sim.machines.indices where other != isolated {
        sim.blocked.insert([isolated, other])
        sim.blocked.insert([other, isolated])
    }
    try sim.run(until: 10_000) { sim in try clientStep(sim, &generator, parser, &ledger) }
    for machine in sim.machines where machine.index != isolated {
        try machine.store.truncateLog(through: .max, limit: .max)
    }
    try sim.healAndSettle(from: 10_000)
    let repaired = sim.machines[isolated].node?.counters.documentsRepaired ?? 0
    return (try check(sim, ledger, seed: seed), repaired)
}

@Suite("Anti-entropy by digest trees in the simulation")
struct AntiEntropySimulationTests {
    @Test func aNodeConvergesAfterItsPeersLostTheirLogs() throws {
        var repaired = 0
        try expectEverySeedPasses(ci: 60, replay: "AntiEntropySimulationTests") { seed in
            let (failures, count) = try runTruncatedLogScenario(seed: seed)
            repaired += count
            return failures
        }
        #expect(repaired > 0, "the isolated nodes were repaired by tree comparisons")
    }

    /// Without periodic comparisons the scenario still converges: the isolated node's pulls find
    /// the logs truncated past its cursors, and its peers compare trees with it (a resync). What
    /// this scenario did before resyncs existed — fail without comparisons — is what
    /// `LogTruncationSimulationTests` shows when the resync is taken out.
    @Test func withoutPeriodicComparisonsAResyncRepairsTheNode() throws {
        let (failures, repaired) = try runTruncatedLogScenario(seed: 1, antiEntropy: false)
        #expect(repaired > 0)
        #expect(failures.isEmpty, "\(failures.prefix(3))")
    }
}
