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
}
