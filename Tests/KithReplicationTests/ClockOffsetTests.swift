import KithReplication
import Testing

/// Members exchanging membership messages with a fixed one-way delay, each with its own wall
/// clock (`offsets`, ms from true time), measuring each other as `ClusterNode` does.
private struct SkewedMembers {
    var members: [Membership]
    var clocks: [ClockOffsets]
    let offsets: [Int64]
    let delay: Int64
    var now: Int64 = 1_000_000
    private var queue: [(at: Int64, from: Int, to: Int, message: MembershipMessage)] = []

    init(offsets: [Int64], delay: Int64 = 5, settings: ClockSettings = ClockSettings()) {
        self.offsets = offsets
        self.delay = delay
        members = offsets.indices.map { index in
            Membership(
                me: Member(id: UInt64(index + 1), name: "n\(index + 1)", address: "n\(index + 1)", role: .core, incarnation: 1),
                seeds: index == 0 ? [] : ["n1"], seed: UInt64(index))
        }
        clocks = offsets.map { _ in ClockOffsets(settings: settings) }
    }

    func wall(_ index: Int) -> Int64 { now + offsets[index] }

    mutating func run(milliseconds: Int64) {
        let end = now + milliseconds
        while now < end {
            now += 1
            while let next = queue.firstIndex(where: { $0.at <= now }) {
                let item = queue.remove(at: next)
                handle(members[item.to].receive(item.message, from: "n\(item.from + 1)", now: now, wall: wall(item.to)), at: item.to)
            }
            if now % 20 == 0 {
                for index in members.indices { handle(members[index].tick(now: now, wall: wall(index)), at: index) }
            }
        }
    }

    private mutating func handle(_ directives: [Membership.Directive], at index: Int) {
        for directive in directives {
            switch directive {
            case .send(let address, let message): queue.append((now + delay, index, Int(address.dropFirst())! - 1, message))
            case .clockSample(let sample): clocks[index].record(sample)
            case .memberUp, .memberDown: break
            }
        }
    }

    func check(_ index: Int) -> ClockCheck {
        let core = members[index].members.values.filter { $0.status != .left }.map(\.id).sorted()
        return clocks[index].check(coreMembers: core, hasSeeds: index > 0, isEdge: false, startedAt: 0, now: now)
    }
}

@Suite("Clock offsets")
struct ClockOffsetTests {
    @Test func aRoundTripGivesTheOffsetAndItsUncertainty() {
        // Sent at 1,000 by this clock, answered at 3,010 by the peer's, back at 1,020: the peer is
        // 2,000 ms ahead, give or take half the 20 ms trip.
        let sample = ClockSample(peer: 2, sentAt: 1_000, peerTime: 3_010, receivedAt: 1_020)
        #expect(sample.offset == 2_000 && sample.roundTrip == 20)
        var offsets = ClockOffsets()
        offsets.record(sample)
        offsets.record(ClockSample(peer: 2, sentAt: 2_000, peerTime: 4_100, receivedAt: 2_200))
        #expect(offsets.clock(of: 2) == PeerClock(peer: 2, offset: 2_000, uncertainty: 10), "the shortest trip is the estimate")
        // A trip that went backwards cannot be right.
        offsets.record(ClockSample(peer: 3, sentAt: 2_000, peerTime: 1, receivedAt: 1_999))
        #expect(offsets.clock(of: 3) == nil)
    }

    @Test func membersMeasureEachOtherFromProbesAndTheFastOneIsOutOfBound() {
        var cluster = SkewedMembers(offsets: [0, 120, -80, 7_200_000, 300])
        cluster.run(milliseconds: 8_000)
        for index in 0..<5 {
            for other in 0..<5 where other != index {
                guard let clock = cluster.clocks[index].clock(of: UInt64(other + 1)) else {
                    Issue.record("n\(index + 1) never measured n\(other + 1)")
                    continue
                }
                #expect(abs(clock.offset - (cluster.offsets[other] - cluster.offsets[index])) <= 1, "n\(index + 1) of n\(other + 1)")
                #expect(clock.uncertainty <= cluster.delay + 1)
            }
        }
        for index in [0, 1, 2, 4] { #expect(cluster.check(index).allowsWrites, "n\(index + 1): \(cluster.check(index))") }
        let fast = cluster.check(3)
        #expect(fast.verdict == .offsetTooLarge && !fast.allowsWrites)
        #expect(abs((fast.offset ?? 0) - 7_200_000 + 120) <= 200, "its offset from the median, \(fast.offset ?? 0)")
    }

    @Test func aNewcomerIsMeasuredAtOnceThroughItsJoin() {
        var cluster = SkewedMembers(offsets: [0, 50])
        cluster.run(milliseconds: 60)
        #expect(cluster.clocks[1].clock(of: 1) != nil, "the welcome echoes the join's time")
        #expect(cluster.clocks[0].clock(of: 2) != nil, "the seed pings the newcomer when it joins")
    }

    /// Writes need a strict majority of the core members, this node included, within the bound.
    @Test(arguments: [
        // (peer offsets, uncertainty, allowed)
        ([Int64](), Int64(0), true), ([100], 0, true), ([900], 0, false), ([100, 900], 0, true), ([900, 900], 0, false),
        ([100, 100, 900, 900], 0, true), ([100, 900, 900, 900], 0, false), ([480], 30, false), ([470], 30, true),
    ])
    func theMajorityRule(_ peers: [Int64], _ uncertainty: Int64, _ allowed: Bool) {
        var offsets = ClockOffsets()
        for (index, offset) in peers.enumerated() {
            offsets.record(
                ClockSample(peer: UInt64(index + 2), sentAt: 1_000, peerTime: 1_000 + uncertainty + offset, receivedAt: 1_000 + 2 * uncertainty))
        }
        let check = offsets.check(coreMembers: peers.indices.map { UInt64($0 + 2) }, hasSeeds: true, isEdge: false, startedAt: 0, now: 60_000)
        #expect(check.allowsWrites == allowed, "\(check)")
    }

    @Test func aMemberNeverMeasuredCountsAgainst() {
        var offsets = ClockOffsets()
        offsets.record(ClockSample(peer: 2, sentAt: 0, peerTime: 0, receivedAt: 0))
        #expect(offsets.check(coreMembers: [2], hasSeeds: true, isEdge: false, startedAt: 0, now: 60_000).allowsWrites)
        #expect(!offsets.check(coreMembers: [2, 3, 4], hasSeeds: true, isEdge: false, startedAt: 0, now: 60_000).allowsWrites)
    }

    @Test func aNodeWithSeedsWaitsForAFirstMeasurementButNotForever() {
        let offsets = ClockOffsets()
        #expect(offsets.check(coreMembers: [], hasSeeds: true, isEdge: false, startedAt: 0, now: 5_000).verdict == .unmeasured)
        #expect(offsets.check(coreMembers: [], hasSeeds: true, isEdge: false, startedAt: 0, now: 10_000).allowsWrites, "alone after the grace")
        #expect(offsets.check(coreMembers: [], hasSeeds: false, isEdge: false, startedAt: 0, now: 0).allowsWrites, "a node on its own")
        #expect(offsets.check(coreMembers: [], hasSeeds: true, isEdge: true, startedAt: 0, now: 0).allowsWrites, "an edge site offline")
    }

    @Test func aJumpOfTheWallClockDropsEveryMeasurement() {
        var offsets = ClockOffsets()
        offsets.observe(wall: 10_000, monotonic: 500)
        offsets.record(ClockSample(peer: 2, sentAt: 10_000, peerTime: 10_005, receivedAt: 10_010))
        offsets.observe(wall: 10_200, monotonic: 700)  // both moved on together: no jump
        #expect(offsets.clock(of: 2) != nil && offsets.jumps == 0)
        offsets.observe(wall: 10_300 - 7_200_000, monotonic: 800)  // set back two hours
        #expect(offsets.clock(of: 2) == nil && offsets.jumps == 1)
        let check = offsets.check(coreMembers: [2], hasSeeds: true, isEdge: false, startedAt: 0, now: 60_000)
        #expect(check.verdict == .unmeasured && !check.allowsWrites)
    }

    @Test func anErasureIsAnsweredOnceEveryClockWithinTheBoundIsPastItsBoundary() {
        let check = ClockOffsets().check(coreMembers: [], hasSeeds: false, isEdge: false, startedAt: 0, now: 0)
        #expect(check.erasureAcknowledgement(boundary: 10_000, acceptedAt: 10_000) == 11_001)
        #expect(check.erasureAcknowledgement(boundary: 10_700, acceptedAt: 10_000) == 11_701)
        #expect(!check.isBoundaryAhead(11_000, acceptedAt: 10_000))
        // A boundary set by a clock out of bound: the answer does not wait hours for it, and says so.
        #expect(check.erasureAcknowledgement(boundary: 7_210_000, acceptedAt: 10_000) == 12_001)
        #expect(check.isBoundaryAhead(7_210_000, acceptedAt: 10_000))
    }
}
