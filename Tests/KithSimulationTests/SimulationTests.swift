import Foundation
import KithCRDT
import KithCluster
import KithCrypto
import KithProfile
import KithReplication
import KithStore
import KithTestSupport
import Testing

/// Seeds: `KITH_SIM_SEED=n` replays one, `KITH_SIM_SEEDS=n` runs n of every scenario
/// (`make simulate`); otherwise each scenario runs its CI share (the main one 200).
func simulationSeeds(ci: UInt64) -> [UInt64] {
    let environment = ProcessInfo.processInfo.environment
    if let one = environment["KITH_SIM_SEED"].flatMap(UInt64.init) { return [one] }
    return Array(0..<(environment["KITH_SIM_SEEDS"].flatMap(UInt64.init) ?? ci))
}

/// What clients did and were told: the reference model gets every acknowledged operation.
struct Ledger {
    var reference = ProfileState()
    var acknowledged: [ProfileDelta] = []
    var erasures: [(keys: [[UInt8]], time: Int64)] = []
    let hasher = HMACForgetKeyHasher(secret: Simulation.secret)
}

/// One seeded run: 3–7 nodes (some edge), faults during a busy phase, then healing; the
/// checkers run at the end.
func runScenario(seed: UInt64) throws -> (failures: [String], appliedAhead: Int) {
    var setup = SplitMix64(seed: seed ^ 0x5EED)
    let nodes = 3 + setup.below(5)
    let edges = setup.below(min(2, nodes - 2) + 1)
    // Odd seeds compare trees as well; even seeds leave all repair to the change logs.
    let simulation = try Simulation(seed: seed, nodes: nodes, edges: edges, antiEntropy: seed % 2 == 1)
    simulation.faults = .init(lossPercent: setup.below(15), duplicatePercent: setup.below(10), maximumDelay: 5 + Int64(setup.below(60)))
    var generator = WorkloadGenerator(seed: seed, customers: 20)
    generator.sendsSentAt = true
    var ledger = Ledger()
    let parser = SegmentMessageParser()

    // Busy phase: clients write to any node that is up, while faults come and go.
    try simulation.run(until: 15_000) { sim in
        try clientStep(sim, &generator, parser, &ledger)
        sim.injectFault()
    }
    // Healing: no faults, every node up, and time for anti-entropy to finish.
    try simulation.heal()
    var settled: Int64 = 15_000
    repeat {
        settled += 2_000
        try simulation.run(until: settled)
    } while try !converged(simulation) && settled < 60_000
    if ProcessInfo.processInfo.environment["KITH_SIM_VERBOSE"] != nil { try describe(simulation) }
    let ahead = simulation.machines.compactMap { $0.node?.counters.appliedAhead }.reduce(0, +)
    return (try check(simulation, ledger, seed: seed), ahead)
}

/// Prints each machine's replication state (KITH_SIM_VERBOSE=1), for reading a failing seed.
private func describe(_ sim: Simulation) throws {
    print("t=\(sim.now) delivered=\(sim.delivered) bytes=\(sim.bytesDelivered)")
    for machine in sim.machines {
        guard let node = machine.node else { continue }
        let members = node.membership.all.map { "\($0.name):\($0.status)/\($0.incarnation)" }.joined(separator: " ")
        print("\(machine.member.name) \(machine.member.role) vv=\(try machine.store.versionVector()) \(node.counters) members: \(members)")
        print("   cursors: \(try sim.machines.map { try machine.store.cursor(of: $0.member.id) })")
    }
}

func clientStep(_ sim: Simulation, _ generator: inout WorkloadGenerator, _ parser: SegmentMessageParser, _ ledger: inout Ledger) throws {
    guard sim.random.chance(45) else { return }
    let up = sim.machines.filter { $0.node != nil }
    guard !up.isEmpty else { return }
    let machine = up[sim.random.below(up.count)]
    let roll = sim.random.below(1_000)
    if roll < 970 {
        let delta = try parser.parse(generator.next(), receivedAt: sim.clock(machine))
        try machine.store.apply([delta])
        ledger.reference.apply(delta, hasher: ledger.hasher)
        ledger.acknowledged.append(delta)
    } else if roll < 990 {
        let c = sim.random.below(20)
        let a = Identifier(kind: .userId, value: "u-\(c)")!, b = Identifier(kind: .anonymousId, value: "a-\(c)-\(sim.random.below(3))")!
        let stamp = LWWStamp(time: sim.clock(machine), tiebreak: "\(machine.member.name)-\(sim.now)")
        try machine.store.removeLink(a, b, stamp: stamp)
        ledger.reference.removeLink(a, b, stamp: stamp, hasher: ledger.hasher)
    } else {
        let subject = Identifier(kind: .userId, value: "u-\(sim.random.below(20))")!
        guard !(try machine.store.erase(subject, requestedAt: sim.clock(machine))).isEmpty,
            case .erasure(let keys, let time) = try machine.store.changes(after: machine.store.versionVector()[machine.member.id] - 1, limit: 1).last?.change
        else { return }
        ledger.reference.applyErasure(forgetKeys: keys.map(Crypto.hex), time: time, hasher: ledger.hasher)
        ledger.erasures.append((keys, time))
    }
    try machine.node?.pushOwnChanges()
}

func converged(_ sim: Simulation) throws -> Bool {
    Set(try sim.machines.map { try $0.store.contentDigest() }).count == 1
}

/// The checkers: replicas byte-identical; every acknowledged message held (unless an erasure
/// dominates it); no erased data back; every profile equal to the reference model's.
func check(_ sim: Simulation, _ ledger: Ledger, seed: UInt64) throws -> [String] {
    var failures: [String] = []
    if !(try converged(sim)) { failures.append("replicas differ after healing") }
    func erasedAt(_ identifier: Identifier) -> Int64? {
        let key = ledger.hasher.forgetKeyBytes(for: identifier)
        return ledger.erasures.filter { $0.keys.contains(key) }.map(\.time).max()
    }
    // A message is dated by its skew-corrected event time; a copy received later (a retry) has a
    // later one, so a message is erased only if every copy of it is dated at or before the erasure.
    var newestCopy: [String: Int64] = [:]
    for delta in ledger.acknowledged { newestCopy[delta.messageId] = max(newestCopy[delta.messageId] ?? .min, delta.times.eventTime) }
    for machine in sim.machines {
        for delta in ledger.acknowledged {
            let held = try machine.store.hasMessage(delta.messageId, subject: delta.subject)
            let erased = erasedAt(delta.subject).map { newestCopy[delta.messageId]! <= $0 } ?? false
            if held == erased {
                failures.append("\(machine.member.name): message \(delta.messageId) \(erased ? "erased but present" : "acknowledged but missing")")
                break
            }
        }
        for identifier in ledger.reference.identifiers.sorted() {
            let expected = ledger.reference.view(of: identifier).map { ProfileFormat.encode($0) }
            if try machine.store.view(of: identifier).map({ ProfileFormat.encode($0) }) != expected {
                failures.append("\(machine.member.name): profile of \(identifier) differs from the reference model")
                break
            }
        }
    }
    return failures
}

@Suite("Deterministic cluster simulation")
struct SimulationTests {
    @Test func everySeedConvergesWithoutLossOrResurrection() throws {
        var failed: [String] = []
        var appliedAhead = 0
        let seeds = simulationSeeds(ci: 200)
        for seed in seeds {
            let (failures, ahead) = try runScenario(seed: seed)
            appliedAhead += ahead
            if !failures.isEmpty {
                failed.append("seed \(seed): \(failures.prefix(3).joined(separator: "; "))\n  replay: KITH_SIM_SEED=\(seed) swift test --filter KithSimulationTests")
            }
        }
        // Changes sent ahead of a backlog happen in a run of many seeds (after crashes and partitions).
        #expect(seeds.count < 50 || appliedAhead > 0)
        #expect(failed.isEmpty, "\(failed.count) of \(seeds.count) seeds failed:\n\(failed.prefix(10).joined(separator: "\n"))")
    }
}
