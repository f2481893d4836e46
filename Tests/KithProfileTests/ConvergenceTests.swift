import KithCRDT
import KithProfile
import KithTestSupport
import Testing

/// An operation a replica can perform: absorb a message, unmerge two identifiers, or erase a person.
enum ReplicaOperation {
    case message(ProfileDelta)
    case unmerge(Identifier, Identifier, LWWStamp)
    case erase(Identifier, Int64)

    func run(on state: inout ProfileState) {
        switch self {
        case .message(let delta): state.apply(delta, hasher: PlainHasher())
        case .unmerge(let a, let b, let stamp): state.removeLink(a, b, stamp: stamp, hasher: PlainHasher())
        case .erase(let identifier, let time): state.erase(identifier, at: time, hasher: PlainHasher())
        }
    }
}

private func encodedViews(_ state: ProfileState) -> [[UInt8]] {
    state.views.map { ProfileFormat.encode($0) }
}

@Suite("Convergence: any order, any replicas, any merges")
struct ConvergenceTests {
    /// The key property: the same set of messages, applied in any order, split across any number of
    /// replicas that merge in any order and any number of times, gives byte-identical profiles.
    @Test(arguments: 0..<40)
    func replicasConvergeToByteIdenticalProfiles(seed: UInt64) {
        var random = SplitMix64(seed: 1_000 + seed)
        let deltas = WorkloadGenerator.deltas(seed: seed, customers: 4 + random.below(30), count: 60 + random.below(200))
        var reference = ProfileState()
        for delta in deltas { reference.apply(delta, hasher: PlainHasher()) }
        let expected = encodedViews(reference)

        let replicaCount = 1 + random.below(5)
        var replicas = [ProfileState](repeating: ProfileState(), count: replicaCount)
        for delta in deltas.shuffled(using: &random) {
            let target = random.below(replicaCount)
            replicas[target].apply(delta, hasher: PlainHasher())
            if random.chance(10) {  // a redelivery to another replica
                replicas[random.below(replicaCount)].apply(delta, hasher: PlainHasher())
            }
            if random.chance(5) {  // an early, partial merge
                let from = random.below(replicaCount)
                replicas[target].merge(replicas[from], hasher: PlainHasher())
            }
        }
        let merged = mergeAllInRandomOrder(replicas, &random)
        #expect(merged == reference, "seed \(seed)")
        #expect(encodedViews(merged) == expected, "seed \(seed): views differ")
    }

    /// Convergence also holds with unmerges and erasures mixed in, and nothing erased comes back.
    @Test(arguments: 0..<40)
    func replicasConvergeWithUnmergesAndErasures(seed: UInt64) {
        var random = SplitMix64(seed: 5_000 + seed)
        let deltas = WorkloadGenerator.deltas(seed: 77 + seed, customers: 6, count: 150)
        var operations = deltas.map { ReplicaOperation.message($0) }
        let u = { (c: Int) in Identifier(kind: .userId, value: "u-\(c)")! }
        for i in 0..<3 {
            let stamp = LWWStamp(time: 1_760_000_000_000 + Int64(random.below(8_000)), tiebreak: "unmerge-\(i)")
            let anonymous = Identifier(kind: .anonymousId, value: "a-\(random.below(6))-\(random.below(3))")!
            operations.insert(.unmerge(u(random.below(6)), anonymous, stamp), at: random.below(operations.count))
        }
        let erased = u(random.below(6))
        let erasureTime: Int64 = 1_760_000_000_000 + 4_000
        operations.insert(.erase(erased, erasureTime), at: random.below(operations.count))

        let replicaCount = 2 + random.below(4)
        var replicas = [ProfileState](repeating: ProfileState(), count: replicaCount)
        for operation in operations { operation.run(on: &replicas[random.below(replicaCount)]) }
        let merged = mergeAllInRandomOrder(replicas, &random)
        let mergedAgain = mergeAllInRandomOrder(replicas.shuffled(using: &random), &random)
        #expect(mergedAgain == merged, "seed \(seed): merge order changed the state")
        #expect(encodedViews(mergedAgain) == encodedViews(merged), "seed \(seed)")

        // Nothing dated at or before an erasure survives for an erased identifier, and old copies
        // that arrive late (a retry, an edge site back online) are dropped.
        var late = merged
        for (identifier, document) in merged.documents {
            guard let time = merged.forgotten[PlainHasher().forgetKey(for: identifier)] else { continue }
            #expect(document.ledger.values.allSatisfy { $0.time > time }, "seed \(seed): erased data of \(identifier) resurrected")
        }
        for delta in deltas where merged.forgotten[PlainHasher().forgetKey(for: delta.subject)].map({ delta.times.eventTime <= $0 }) ?? false {
            let outcome = late.apply(delta, hasher: PlainHasher())
            #expect(outcome == .forgotten, "seed \(seed)")
        }
        #expect(late == merged)
        #expect(merged.forgotten[PlainHasher().forgetKey(for: erased)].map { $0 >= erasureTime } == true)
    }

    @Test func profileStateMergeIsASemilattice() {
        var random = SplitMix64(seed: 99)
        for index in 0..<1_000 {
            let deltas = WorkloadGenerator.deltas(seed: UInt64(index), customers: 3, count: 24)
            var states = [ProfileState](repeating: ProfileState(), count: 3)
            for delta in deltas { states[random.below(3)].apply(delta, hasher: PlainHasher()) }
            if random.chance(20) {
                states[random.below(3)].erase(deltas[0].subject, at: deltas[0].times.eventTime, hasher: PlainHasher())
            }
            let (a, b, c) = (states[0], states[1], states[2])
            #expect(a.merging(b) == b.merging(a), "commutativity, case \(index)")
            #expect(a.merging(b).merging(c) == a.merging(b.merging(c)), "associativity, case \(index)")
            #expect(a.merging(a) == a, "idempotence, case \(index)")
        }
    }

    private func mergeAllInRandomOrder(_ replicas: [ProfileState], _ random: inout SplitMix64) -> ProfileState {
        var pool = replicas
        while pool.count > 1 {
            let i = random.below(pool.count)
            var j = random.below(pool.count)
            if i == j { j = (j + 1) % pool.count }
            pool[i].merge(pool[j], hasher: PlainHasher())
            if random.chance(30) { pool[i].merge(pool[j], hasher: PlainHasher()) }  // merging twice changes nothing
            pool.remove(at: j)
        }
        return pool[0]
    }
}

extension ProfileState {
    func merging(_ other: ProfileState) -> ProfileState {
        var copy = self
        copy.merge(other, hasher: PlainHasher())
        return copy
    }
}
