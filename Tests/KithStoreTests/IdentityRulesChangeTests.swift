import Foundation
import KithCRDT
import KithJSON
import KithProfile
import Testing

@testable import KithStore

/// Identity rules changed after the data came: every store brings its profiles under the new
/// rules, and stores holding the same messages end with the same profiles, byte for byte.
@Suite("Identity rules that change")
struct IdentityRulesChangeTests {
    /// One customer on five devices (anonymous ids), a day apart, and a second customer.
    static let messages: [String] =
        (0..<5).map { index in
            #"{"type":"identify","userId":"u-1","anonymousId":"tablet-\#(index)","messageId":"m-\#(index)","timestamp":"2026-03-0\#(index + 1)T10:00:00Z","traits":{"visits":\#(index)}}"#
        } + [#"{"type":"track","userId":"u-2","anonymousId":"phone-9","event":"Visit","messageId":"m-9","timestamp":"2026-03-02T09:00:00Z"}"#]

    static func rules(anonymousLimit: Int, version: Int, blockedEmails: Set<String> = []) throws -> IdentityRules {
        try IdentityRules(version: version, blockedByKind: [.email: blockedEmails], limits: [.userId: 1, .anonymousId: anonymousLimit])
    }

    static func store(_ rules: IdentityRules, _ order: [Int]) throws -> MemoryProfileStore {
        let store = MemoryProfileStore(
            configuration: StoreConfiguration(node: 1, forgetKeySecret: secret, profile: ProfileConfiguration(rules: rules)))
        let parser = SegmentMessageParser(rules: rules)
        for index in order { try store.apply([try parser.parse(try JSONParser.parse(Array(messages[index].utf8)), receivedAt: 1_780_000_000_000)]) }
        #expect(try store.reevaluateIdentity(buckets: 1_024), "a store built under its own rules has nothing to do")
        return store
    }

    /// The same data opened under `rules`, brought under them `buckets` at a time.
    static func reopened(_ store: MemoryProfileStore, _ rules: IdentityRules, buckets: Int = 64) throws -> MemoryProfileStore {
        let reopened = MemoryProfileStore(
            configuration: StoreConfiguration(node: 1, forgetKeySecret: secret, profile: ProfileConfiguration(rules: rules)), copying: store)
        #expect(try reopened.identityRulesNeedWork())
        var steps = 1
        while try !reopened.reevaluateIdentity(buckets: buckets) { steps += 1 }
        #expect(steps == (1_024 + buckets - 1) / buckets)
        #expect(try !reopened.identityRulesNeedWork())
        return reopened
    }

    /// Every profile, as its stored bytes.
    static func profiles(_ store: MemoryProfileStore) throws -> [[UInt8]] {
        try store.profiles(after: nil, limit: 100).map { ProfileFormat.encode($0) }
    }

    @Test func tighteningALimitSplitsAndLooseningItMergesTheSameEverywhere() throws {
        let loose = try Self.rules(anonymousLimit: 5, version: 1)
        let a = try Self.store(loose, Array(0..<6))
        let b = try Self.store(loose, [5, 4, 2, 0, 3, 1])
        #expect(try Self.profiles(a) == Self.profiles(b))
        #expect(try a.view(of: Identifier(kind: .userId, value: "u-1")!)?.members.count == 6)

        let tight = try Self.rules(anonymousLimit: 1, version: 2)
        let tightA = try Self.reopened(a, tight, buckets: 7)
        let tightB = try Self.reopened(b, tight, buckets: 1_024)
        #expect(try Self.profiles(tightA) == Self.profiles(tightB), "replicas split the component the same way")
        // The customer keeps the device it was first seen on; the others stand alone.
        #expect(
            try tightA.view(of: Identifier(kind: .userId, value: "u-1")!)?.members.map(\.description) == ["user_id:u-1", "anonymous_id:tablet-0"])
        #expect(try tightA.view(of: Identifier(kind: .anonymousId, value: "tablet-3")!)?.members.map(\.description) == ["anonymous_id:tablet-3"])
        #expect(try tightA.profiles(after: nil, limit: 100).count == 6)
        let links = try tightA.links(of: Identifier(kind: .userId, value: "u-1")!)
        let refused = links.filter { $0.to.value == "tablet-3" }
        #expect(refused.count == 1 && refused[0].active && refused[0].refusedBy == .limit(.anonymousId, 1))
        #expect(links.first { $0.to.value == "tablet-0" }?.refusedBy == nil)

        let looseAgain = try Self.rules(anonymousLimit: 5, version: 3)
        #expect(try Self.profiles(Self.reopened(tightA, looseAgain)) == Self.profiles(a), "loosened: merged back, byte for byte")
        #expect(try Self.profiles(Self.reopened(tightB, looseAgain)) == Self.profiles(b))
    }

    /// A value blocked after the data came no longer joins anyone, and the profile's links say why.
    @Test func aValueBlockedLaterIsLetGo() throws {
        let rules = try Self.rules(anonymousLimit: 5, version: 1)
        let parser = SegmentMessageParser(rules: rules)
        let store = MemoryProfileStore(
            configuration: StoreConfiguration(node: 1, forgetKeySecret: secret, profile: ProfileConfiguration(rules: rules)))
        let identify = #"{"type":"identify","userId":"u-5","messageId":"e-1","traits":{"email":"NoReply@Shop.example"}}"#
        try store.apply([try parser.parse(try JSONParser.parse(Array(identify.utf8)), receivedAt: 1_780_000_000_000)])
        let user = Identifier(kind: .userId, value: "u-5")!
        #expect(try store.view(of: user)?.members.count == 2)
        let blocked = try Self.reopened(store, Self.rules(anonymousLimit: 5, version: 2, blockedEmails: ["noreply@shop.example"]))
        #expect(try blocked.view(of: user)?.members == [user])
        #expect(try blocked.links(of: user).first?.refusedBy == .blocked(.email))
        // New messages with the blocked value name no one.
        let again = try SegmentMessageParser(rules: Self.rules(anonymousLimit: 5, version: 2, blockedEmails: ["noreply@shop.example"]))
            .parse(try JSONParser.parse(Array(identify.utf8)), receivedAt: 1_780_000_000_000)
        #expect(again.links.isEmpty)
    }

    /// An unmerge that comes after an erasure (from a peer that had not heard of it) leaves the
    /// erased identifiers a link's removal and nothing else: computing profiles again must not
    /// give them profiles.
    @Test func erasedIdentifiersStayUnknown() throws {
        let store = try Self.store(Self.rules(anonymousLimit: 5, version: 1), [0])
        let user = Identifier(kind: .userId, value: "u-1")!, tablet = Identifier(kind: .anonymousId, value: "tablet-0")!
        let erasure = try store.erase(user, requestedAt: 1_780_000_000_000)
        try store.removeLink(user, tablet, stamp: LWWStamp(time: erasure.boundary + 10_000, tiebreak: "unlink"))
        #expect(try store.view(of: tablet) == nil && store.view(of: user) == nil && store.links(of: user).isEmpty)
        let again = try Self.reopened(store, Self.rules(anonymousLimit: 1, version: 2))
        #expect(try again.view(of: tablet) == nil && again.view(of: user) == nil, "no profile for an identifier erased")
        #expect(try Self.profiles(again).isEmpty)
    }

    @Test func rulesThatCannotHoldAreRefused() {
        #expect(throws: IdentityRuleError.self) { try IdentityRules(blockedPatterns: [.phone: ["(unclosed"]]) }
        #expect(throws: IdentityRuleError.self) { try IdentityRules(limits: [.email: 0]) }
        let patterns = try? IdentityRules(blockedPatterns: [.phone: [#"\+1555\d+"#]])
        #expect(patterns?.isBlocked("+15550100", kind: .phone) == true && patterns?.isBlocked("+15550100", kind: .email) == false)
        #expect(patterns?.isBlocked("+4415550100", kind: .phone) == false, "a pattern matches whole values")
    }
}
