import KithCRDT
import KithCluster
import KithReplication
import Testing

/// Which member delivers a subscription, and when a failing delivery goes again: pure rules.
@Suite("Webhook ownership and retries")
struct WebhookOwnershipTests {
    static func member(_ id: UInt64, _ status: MemberStatus = .alive, role: MemberRole = .core) -> Member {
        LogTruncationPlanTests.member(id, status, role: role)
    }

    @Test func everyNodeNamesTheSameOwnerAndOnlyAnAliveCoreOne() {
        let members = (1...5).map { Self.member(UInt64($0)) } + [Self.member(9, role: .edge)]
        var counts: [UInt64: Int] = [:]
        for index in 0..<600 {
            let name = "subscription-\(index)"
            let owner = SubscriptionOwnership.owner(of: name, among: members)
            #expect(owner == SubscriptionOwnership.owner(of: name, among: members.reversed()), "the order members are seen in does not matter")
            #expect(owner != 9, "an edge never delivers")
            counts[owner!, default: 0] += 1
            // Its owner dies: the next-ranked takes over, and the others keep theirs.
            let without = members.map { $0.id == owner ? Self.member($0.id, .dead) : $0 }
            let next = SubscriptionOwnership.owner(of: name, among: without)
            #expect(next != nil && next != owner)
        }
        #expect(counts.count == 5 && counts.values.allSatisfy { $0 > 60 }, "spread over the core members: \(counts)")
        #expect(SubscriptionOwnership.owner(of: "x", among: [Self.member(1, .suspect), Self.member(2, role: .edge)]) == nil)
    }

    /// Taking a member away moves only the subscriptions it delivered.
    @Test func aMemberLeavingMovesOnlyItsOwn() {
        let members = (1...4).map { Self.member(UInt64($0)) }
        for index in 0..<200 {
            let name = "s\(index)"
            let before = SubscriptionOwnership.owner(of: name, among: members)!
            let after = SubscriptionOwnership.owner(of: name, among: members.filter { $0.id != 4 })!
            if before != 4 { #expect(after == before) }
        }
    }

    @Test func failuresWaitLongerEachTimeThenPark() {
        let policy = WebhookRetryPolicy(firstDelayMillis: 1_000, maximumDelayMillis: 8_000, maximumAttempts: 6)
        #expect((1...6).map { policy.delay(afterFailures: $0) } == [1_000, 2_000, 4_000, 8_000, 8_000, 8_000])
        #expect(policy.decide(failures: 0, lastFailure: nil, now: 0) == .deliver)
        #expect(policy.decide(failures: 2, lastFailure: 10_000, now: 11_999) == .wait(until: 12_000))
        #expect(policy.decide(failures: 2, lastFailure: 10_000, now: 12_000) == .deliver)
        #expect(policy.decide(failures: 6, lastFailure: 10_000, now: 10_001) == .deadLetter)
    }

    static func token(_ n: UInt64) -> FeedToken { FeedToken(versions: VersionVector([7: n]), node: 7, position: n) }

    /// A run's place through deliveries, failures, a parked batch, a replay and a gap; and when
    /// its progress is due to be written.
    @Test func aRunMovesOnlyPastWhatWasDeliveredParkedOrSkipped() {
        var run = WebhookRun(progress: SubscriptionProgress(token: Self.token(0)))
        run.failed(at: 10, error: "503")
        #expect(run.failures == 1 && run.from == Self.token(0) && !run.unsaved, "a failure moves nothing")
        run.delivered(records: 3, through: Self.token(5))
        #expect(run.failures == 0 && run.lastFailure == nil && run.progress.delivered == 3 && run.from == Self.token(5) && run.unsaved)
        #expect(run.takeSave(now: 2_000, every: 1_000) && !run.takeSave(now: 2_100, every: 1_000), "saved once until something changes")
        // Passing over filtered entries moves the place but is not worth a write.
        run.passedOver(to: Self.token(6))
        #expect(run.from == Self.token(6) && !run.unsaved)
        // Parked after failing: the range is kept, delivery goes on after it.
        run.failed(at: 20, error: "timeout")
        run.park(through: Self.token(9), records: 2, at: 1_234)
        #expect(
            run.progress.deadLetters == [.init(id: 1, from: Self.token(6), through: Self.token(9), records: 2, failedAt: 1_234, error: "timeout")])
        #expect(run.from == Self.token(9) && run.failures == 0 && run.unsaved)
        // A replay: the dead letter goes first, once per request, and the place stays.
        run.replayRequested(at: 50)
        run.replayRequested(at: 50)
        #expect(run.replaying.count == 1 && run.progress.deadLetters.isEmpty && run.from == Self.token(6))
        run.delivered(records: 1, through: Self.token(8))
        #expect(run.replaying.first?.from == Self.token(8), "part of the parked range delivered: the rest goes next")
        run.delivered(records: 1, through: Self.token(10))
        #expect(run.replaying.isEmpty && run.from == Self.token(9) && run.progress.delivered == 5)
        // A gap the log no longer holds: parked, and the place moves to now.
        run.skipGap(to: Self.token(40), at: 2_000)
        #expect(run.from == Self.token(40) && run.progress.deadLetters.last?.records == 0 && run.progress.deadLetters.last?.from == Self.token(9))
        // Written again every interval, the progress with it.
        _ = run.takeSave(now: 3_000, every: 1_000)
        #expect(run.reassertIfDue(now: 0, every: 600_000) && run.unsaved && !run.reassertIfDue(now: 1_000, every: 600_000))
    }
}
