import KithCRDT
import KithTestSupport
import Testing

private func randomStamp(_ r: inout SplitMix64) -> LWWStamp {
    LWWStamp(time: Int64(r.below(6)), tiebreak: ["m1", "m2", "m3"][r.below(3)])
}

private func randomRegister(_ r: inout SplitMix64) -> LWWRegister<String> {
    LWWRegister(["a", "b", "c", ""][r.below(4)], stamp: randomStamp(&r))
}

private func randomORSet(_ r: inout SplitMix64) -> ORSet<String, String> {
    var set = ORSet<String, String>()
    for _ in 0..<r.below(8) {
        let element = ["x", "y", "z"][r.below(3)]
        if r.chance(70) { set.add(element, tag: "t\(r.below(10))") } else { set.remove(element) }
    }
    return set
}

private func randomGCounter(_ r: inout SplitMix64) -> GCounter {
    var counter = GCounter()
    for _ in 0..<r.below(5) { counter.increment(replica: UInt64(r.below(4)), by: UInt64(r.below(5))) }
    return counter
}

private func randomPNCounter(_ r: inout SplitMix64) -> PNCounter {
    var counter = PNCounter()
    for _ in 0..<r.below(5) { counter.add(replica: UInt64(r.below(4)), Int64(r.below(11)) - 5) }
    return counter
}

private func randomMap(_ r: inout SplitMix64) -> CRDTMap<String, LWWRegister<String>> {
    var map = CRDTMap<String, LWWRegister<String>>()
    for _ in 0..<r.below(5) { map.merge(key: ["k1", "k2", "k3"][r.below(3)], randomRegister(&r)) }
    return map
}

@Suite("CRDT join laws (seeded, 1,000 cases each)")
struct CRDTLawTests {
    @Test func lwwRegisterIsASemilattice() { expectJoinLaws(LWWRegister<String>.self, seed: 1, generate: randomRegister) }
    @Test func orSetIsASemilattice() { expectJoinLaws(ORSet<String, String>.self, seed: 2, generate: randomORSet) }
    @Test func gCounterIsASemilattice() { expectJoinLaws(GCounter.self, seed: 3, generate: randomGCounter) }
    @Test func pnCounterIsASemilattice() { expectJoinLaws(PNCounter.self, seed: 4, generate: randomPNCounter) }
    @Test func crdtMapIsASemilattice() { expectJoinLaws(CRDTMap<String, LWWRegister<String>>.self, seed: 5, generate: randomMap) }

    @Test func encodingsRoundTrip() {
        expectRoundTrips(LWWRegister<String>.self, seed: 11, generate: randomRegister)
        expectRoundTrips(ORSet<String, String>.self, seed: 12, generate: randomORSet)
        expectRoundTrips(GCounter.self, seed: 13, generate: randomGCounter)
        expectRoundTrips(PNCounter.self, seed: 14, generate: randomPNCounter)
        expectRoundTrips(CRDTMap<String, LWWRegister<String>>.self, seed: 15, generate: randomMap)
    }
}

/// Delta-state equivalence: replicas that each apply operations and ship only the deltas end in
/// the same state as merging their full states, whatever order (and duplication) the deltas have.
@Suite("Deltas are equivalent to full states")
struct DeltaEquivalenceTests {
    @Test func orSetDeltas() {
        var random = SplitMix64(seed: 21)
        for _ in 0..<1_000 {
            var replicas = [ORSet<String, String>](repeating: ORSet(), count: 3)
            var deltas: [ORSet<String, String>] = []
            for step in 0..<12 {
                let index = random.below(3)
                let element = ["x", "y", "z"][random.below(3)]
                if random.chance(65) {
                    deltas.append(replicas[index].add(element, tag: "r\(index)-\(step)"))
                } else {
                    deltas.append(replicas[index].remove(element))
                }
            }
            expectDeltasMatchFullStates(replicas, deltas, &random)
        }
    }

    @Test func counterDeltas() {
        var random = SplitMix64(seed: 22)
        for _ in 0..<1_000 {
            var replicas = [PNCounter](repeating: PNCounter(), count: 3)
            var deltas: [PNCounter] = []
            for _ in 0..<10 {
                let index = random.below(3)
                deltas.append(replicas[index].add(replica: UInt64(index), Int64(random.below(9)) - 4))
            }
            expectDeltasMatchFullStates(replicas, deltas, &random)
            #expect(deltas.reduce(PNCounter()) { $0.merging($1) }.value == replicas.reduce(0) { $0 + $1.value })
        }
    }

    @Test func registerAndMapDeltas() {
        var random = SplitMix64(seed: 23)
        for _ in 0..<1_000 {
            var replicas = [CRDTMap<String, LWWRegister<String>>](repeating: CRDTMap(), count: 3)
            var deltas: [CRDTMap<String, LWWRegister<String>>] = []
            for step in 0..<10 {
                let index = random.below(3)
                let delta = CRDTMap(["k\(random.below(3))": LWWRegister("v\(step)", stamp: randomStamp(&random))])
                replicas[index].merge(delta)
                deltas.append(delta)
            }
            expectDeltasMatchFullStates(replicas, deltas, &random)
        }
    }

    private func expectDeltasMatchFullStates<T: CRDT>(_ replicas: [T], _ deltas: [T], _ random: inout SplitMix64) {
        guard let first = replicas.first else { return }
        let full = replicas.dropFirst().reduce(first) { $0.merging($1) }
        var shuffled = deltas + deltas.prefix(random.below(deltas.count + 1))
        shuffled.shuffle(using: &random)
        var fromDeltas = shuffled[0]
        for delta in shuffled.dropFirst() { fromDeltas.merge(delta) }
        #expect(fromDeltas == full)
    }
}

@Suite("Conflict rules")
struct ConflictRuleTests {
    @Test func laterStampWinsWhateverTheOrder() {
        var register = LWWRegister("old", stamp: LWWStamp(time: 5, tiebreak: "m2"))
        let olderWon = register.assign("older", stamp: LWWStamp(time: 4, tiebreak: "m9"))
        let newerWon = register.assign("new", stamp: LWWStamp(time: 5, tiebreak: "m3"))
        #expect(!olderWon)
        #expect(newerWon)
        #expect(register.value == "new")
    }

    @Test func equalStampsPickTheGreaterValue() {
        let a = LWWRegister("a", stamp: LWWStamp(time: 1, tiebreak: "m"))
        let b = LWWRegister("b", stamp: LWWStamp(time: 1, tiebreak: "m"))
        #expect(a.merging(b).value == "b")
        #expect(b.merging(a).value == "b")
    }

    @Test func concurrentAddWinsOverRemove() {
        var left = ORSet<String, String>()
        left.add("x", tag: "t1")
        var right = left
        right.remove("x")
        left.add("x", tag: "t2")
        #expect(left.merging(right).contains("x"))
        #expect(left.merging(right).live["x"] == ["t2"])
    }

    @Test func removedTagNeverReturns() {
        var set = ORSet<String, String>()
        let add = set.add("x", tag: "t1")
        set.remove("x")
        set.merge(add)
        #expect(!set.contains("x"))
    }

    @Test func counterCountsEachReplicaOnce() {
        var a = GCounter(), b = GCounter()
        a.increment(replica: 1, by: 3)
        b.increment(replica: 2, by: 4)
        b.merge(a)
        a.merge(b)
        a.merge(b)
        #expect(a.value == 7)
    }
}

@Suite("Hybrid logical clock")
struct HybridLogicalClockTests {
    @Test func ticksAreStrictlyIncreasingEvenWhenPhysicalTimeStalls() {
        var clock = HybridLogicalClock(node: 1)
        var previous = clock.tick(physicalMillis: 100)
        for physical in [100, 100, 99, 50, 101, 101] as [Int64] {
            let next = clock.tick(physicalMillis: physical)
            #expect(next > previous)
            previous = next
        }
    }

    @Test func observeMovesPastTheRemoteTimestamp() {
        var clock = HybridLogicalClock(node: 1)
        _ = clock.tick(physicalMillis: 10)
        let remote = HybridTimestamp(wallMillis: 20, logical: 7, node: 2)
        let received = clock.observe(remote, physicalMillis: 12)
        #expect(received.map { $0 > remote } == true)
        #expect(clock.tick(physicalMillis: 12) > remote)
    }

    @Test func refusesTimestampsTooFarInTheFuture() {
        var clock = HybridLogicalClock(node: 1, maximumForwardDriftMillis: 1_000)
        let before = clock.tick(physicalMillis: 10)
        #expect(clock.observe(HybridTimestamp(wallMillis: 5_000, node: 2), physicalMillis: 10) == nil)
        #expect(clock.last == before)
    }

    @Test func causalityHoldsAcrossRandomMessageExchanges() {
        var random = SplitMix64(seed: 31)
        var clocks = (0..<4).map { HybridLogicalClock(node: UInt64($0)) }
        var physical: [Int64] = [1_000, 990, 1_010, 1_005]
        for _ in 0..<2_000 {
            let sender = random.below(4), receiver = random.below(4)
            physical[sender] += Int64(random.below(3))
            physical[receiver] += Int64(random.below(3))
            let sent = clocks[sender].tick(physicalMillis: physical[sender])
            if let received = clocks[receiver].observe(sent, physicalMillis: physical[receiver]) {
                #expect(received > sent)
            }
        }
    }
}

@Suite("Binary encoding")
struct BinaryEncodingTests {
    @Test func varintsAndSignedValuesRoundTrip() throws {
        var random = SplitMix64(seed: 41)
        for _ in 0..<1_000 {
            let unsigned = random.next() >> UInt64(random.below(64))
            let signed = Int64(bitPattern: random.next()) >> Int64(random.below(64))
            var writer = BinaryWriter()
            writer.write(varint: unsigned)
            writer.write(signed: signed)
            writer.write(bigEndian: unsigned)
            var reader = BinaryReader(writer.bytes)
            #expect(try reader.readVarint() == unsigned)
            #expect(try reader.readSigned() == signed)
            #expect(try reader.readBigEndianUInt64() == unsigned)
            try reader.expectEnd()
        }
    }

    @Test func rejectsLengthsLongerThanTheInput() {
        var writer = BinaryWriter()
        writer.write(varint: 1_000_000)
        writer.write(raw: [1, 2, 3])
        var reader = BinaryReader(writer.bytes)
        #expect(throws: BinaryDecodingError.self) { try reader.readString() }
    }

    @Test("a count is accepted exactly when its items could fit in the bytes left, and a count that overflows when multiplied is refused")
    func countsAreBoundedByTheInput() throws {
        for size in 1...9 {
            for left in 0...40 {
                var writer = BinaryWriter()
                writer.write(varint: UInt64(left / size))
                writer.write(raw: [UInt8](repeating: 0, count: left))
                var fits = BinaryReader(writer.bytes)
                #expect(try fits.readCount(minimumItemSize: size) == left / size)
                var tooMany = BinaryWriter()
                tooMany.write(varint: UInt64(left / size + 1))
                tooMany.write(raw: [UInt8](repeating: 0, count: left))
                var reader = BinaryReader(tooMany.bytes)
                #expect(throws: BinaryDecodingError.self) { try reader.readCount(minimumItemSize: size) }
            }
        }
        var huge = BinaryWriter()
        huge.write(varint: UInt64.max / 2 + 1)  // times 2 wraps to zero
        var reader = BinaryReader(huge.bytes + [0, 0])
        #expect(throws: BinaryDecodingError.self) { try reader.readCount(minimumItemSize: 2) }
        var cut = BinaryReader([0x80, 0x80])  // a varint whose last byte is missing
        #expect(throws: BinaryDecodingError.self) { try cut.readVarint() }
    }

    @Test("strings read back as written, ASCII or not; invalid UTF-8 is refused where its length starts")
    func stringsAreCheckedOnce() throws {
        for text in ["", "plain", "zoë", "日本語", "😀 and a\u{2028}", String(repeating: "é", count: 100)] {
            var writer = BinaryWriter()
            writer.write(string: text)
            writer.write(string: "after")
            var reader = BinaryReader(writer.bytes)
            #expect(try reader.readString() == text)
            #expect(try reader.readString() == "after")
        }
        for invalid: [UInt8] in [[0xC3, 0x28], [0xE2, 0x82], [0xED, 0xA0, 0x80], [0x61, 0xFF]] {
            var reader = BinaryReader([0x41] + [UInt8(invalid.count)] + invalid)
            _ = try reader.readByte()
            #expect(throws: BinaryDecodingError(.invalidUTF8, offset: 1)) { try reader.readString() }
        }
    }

    @Test func rejectsOverlongVarints() {
        var reader = BinaryReader([UInt8](repeating: 0xFF, count: 10) + [0x01])
        #expect(throws: BinaryDecodingError.self) { try reader.readVarint() }
    }

    @Test func rejectsInvalidUTF8AndTrailingBytes() {
        #expect(throws: BinaryDecodingError.self) { try String(decoding: [2, 0xC3, 0x28]) }
        #expect(throws: BinaryDecodingError.self) { try String(decoding: [1, 0x41, 0x00]) }
    }

    @Test func randomBytesNeverCrashTheDecoders() {
        var random = SplitMix64(seed: 42)
        for _ in 0..<5_000 {
            let bytes = (0..<random.below(24)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            _ = try? ORSet<String, String>(decoding: bytes)
            _ = try? CRDTMap<String, LWWRegister<String>>(decoding: bytes)
            _ = try? PNCounter(decoding: bytes)
        }
    }
}
