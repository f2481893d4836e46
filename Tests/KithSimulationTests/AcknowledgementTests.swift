import KithCRDT
import KithCluster
import KithProfile
import KithStore
import KithTestSupport
import Testing

/// The ground for write acknowledgement levels (issue 7): a node learns which peers hold its
/// own changes durably, from their answers to its pushes and from their pulls.
@Suite("Simulation: peers acknowledge what they hold")
struct AcknowledgementTests {
    @Test func aNodeLearnsWhichPeersHoldItsChanges() throws {
        let sim = try Simulation(seed: 5, nodes: 3, edges: 0)
        let writer = sim.machines[0]
        try sim.run(until: 1_000)
        let deltas = WorkloadGenerator.deltas(seed: 5, customers: 4, count: 3)
        try writer.store.apply(deltas)
        try writer.node!.pushOwnChanges()
        let own = try writer.store.versionVector()[writer.member.id]
        try sim.run(until: 1_200)
        #expect(writer.node!.peersHolding(ownChange: own) == [2, 3])

        // A peer cut off from the writer does not hold the next write; once the link is back,
        // its pull tells the writer it caught up.
        sim.blocked.formUnion([[0, 2], [2, 0]])
        try writer.store.apply(WorkloadGenerator.deltas(seed: 6, customers: 4, count: 2))
        try writer.node!.pushOwnChanges()
        let next = try writer.store.versionVector()[writer.member.id]
        try sim.run(until: 1_400)
        #expect(writer.node!.peersHolding(ownChange: next) == [2])
        #expect(writer.node!.peersHolding(ownChange: own) == [2, 3])
        sim.blocked = []
        try sim.run(until: 4_000)
        #expect(writer.node!.peersHolding(ownChange: next) == [2, 3])
    }
}

@Suite("Write concern")
struct WriteConcernTests {
    @Test func requiredReplicas() {
        #expect((1...7).map { WriteConcern.one.required(replicas: $0) } == [1, 1, 1, 1, 1, 1, 1])
        #expect((1...7).map { WriteConcern.quorum.required(replicas: $0) } == [1, 2, 2, 3, 3, 4, 4])
        #expect((1...7).map { WriteConcern.all.required(replicas: $0) } == [1, 2, 3, 4, 5, 6, 7])
        #expect(WriteConcern(rawValue: "quorum") == .quorum && WriteConcern(rawValue: "2") == nil)
    }

    @Test func edgesHoldCopiesButAreNotCountedAsReplicas() throws {
        let sim = try Simulation(seed: 8, nodes: 4, edges: 1)
        try sim.run(until: 2_000)
        let writer = sim.machines[0]
        #expect(writer.node!.replicaIDs == [1, 2, 3])
        try writer.store.apply(WorkloadGenerator.deltas(seed: 8, customers: 3, count: 2))
        try writer.node!.pushOwnChanges()
        try sim.run(until: 2_300)
        let own = try writer.store.versionVector()[writer.member.id]
        #expect(writer.node!.peersHolding(ownChange: own) == [2, 3, 4])
        #expect(writer.node!.replicasHolding(ownChange: own) == 3)
    }
}

@Suite("Version vectors for sessions")
struct SessionVectorTests {
    @Test func mergeAndCoverage() {
        var a = VersionVector([1: 5, 2: 3])
        let b = VersionVector([2: 7, 3: 1])
        #expect(a.lacking(b) == [2, 3] && !a.covers(b) && a.covers(VersionVector([1: 5])))
        a.merge(b)
        #expect(a == VersionVector([1: 5, 2: 7, 3: 1]) && a.covers(b) && a.lacking(b).isEmpty)
        #expect(VersionVector().covers(VersionVector()))
    }
}
