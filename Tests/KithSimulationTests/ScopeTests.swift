import KithCRDT
import KithCluster
import KithCrypto
import KithJSON
import KithPolicy
import KithProfile
import KithStore
import KithTestSupport
import Testing

/// Which customers a scoped member holds: decided on whole identity components, the same in
/// any order of messages, and moving with merges, unmerges and trait changes.
@Suite("Scope of a member")
struct ScopeTests {
    static let parser = SegmentMessageParser()
    static let hasher = HMACForgetKeyHasher(secret: Array(repeating: 7, count: 32))
    static let leeds = Scope.only([.trait(name: "homeStore", value: .string("leeds-1"))])

    static func apply(_ json: String, at time: Int64, to state: inout ProfileState) throws {
        let delta = try parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: time)
        _ = state.apply(delta, hasher: hasher)
    }

    static func id(_ text: String) -> Identifier { Identifier(parsing: text)! }

    /// Components without acceptances (the model keeps none): the clauses but `seen`.
    static func components(_ views: [ProfileView]) -> [Scope.Component] { views.map { Scope.Component(view: $0) } }

    static func holds(_ scope: Scope, _ view: ProfileView) -> Bool { scope.holds(Scope.Component(view: view), now: 0) }

    /// What a change moves at a site: the members it held before and not after, and those it
    /// holds after.
    struct Moves: Equatable {
        var purge: [Identifier]
        var send: [Identifier]
    }

    static func moves(_ holdings: SiteHoldings, _ before: [Scope.Component], _ after: [Scope.Component], now: Int64) -> Moves {
        let heldBefore = Set(before.flatMap { holdings.held($0, now: now)?.members ?? [] })
        let heldAfter = Set(after.flatMap { holdings.held($0, now: now)?.members ?? [] })
        return Moves(purge: heldBefore.subtracting(heldAfter).sorted(), send: heldAfter.sorted())
    }

    /// What a change moves at a site of this scope serving support (which needs no consent and
    /// sees every kind), so that the scope alone decides.
    static func plan(_ scope: Scope, _ before: [ProfileView], _ after: [ProfileView]) throws -> Moves {
        moves(try SiteHoldings(scope: scope, purposes: ["support"], policy: .builtIn), components(before), components(after), now: 0)
    }

    /// The views of the components holding `identifiers`, each once.
    static func views(_ state: ProfileState, _ identifiers: [String]) -> [ProfileView] {
        var seen: Set<Identifier> = []
        return identifiers.compactMap { state.view(of: id($0)) }.filter { seen.insert($0.canonical).inserted }
    }

    /// A trait carried by one member's document holds the whole component: a merge brings the
    /// other members in, an unmerge sends them out again, and a new value of the trait takes
    /// the component out.
    @Test func componentsMoveInAndOutWithMergesUnmergesAndTraits() throws {
        var state = ProfileState()
        try Self.apply(
            #"{"type":"identify","anonymousId":"a-1","traits":{"homeStore":"leeds-1"},"messageId":"m1","timestamp":"2026-01-01T00:00:00Z"}"#,
            at: 1_000, to: &state)
        try Self.apply(
            #"{"type":"identify","userId":"u-1","traits":{"email":"ann@example.com"},"messageId":"m2","timestamp":"2026-01-01T00:00:01Z"}"#,
            at: 2_000, to: &state)
        let names = ["anonymous_id:a-1", "user_id:u-1", "email:ann@example.com"]
        let apart = Self.views(state, names)
        #expect(apart.count == 2)
        #expect(apart.filter { Self.holds(Self.leeds, $0) }.map(\.members) == [[Self.id("anonymous_id:a-1")]])

        // The web site learns who the visitor is: one component, held whole.
        try Self.apply(
            #"{"type":"identify","userId":"u-1","anonymousId":"a-1","messageId":"m3","timestamp":"2026-01-01T00:00:02Z"}"#, at: 3_000,
            to: &state)
        let merged = Self.views(state, names)
        #expect(merged.count == 1 && Self.holds(Self.leeds, merged[0]))
        let u1 = Self.id("user_id:u-1"), email = Self.id("email:ann@example.com"), a1 = Self.id("anonymous_id:a-1")
        #expect(try Self.plan(Self.leeds, apart, merged) == Moves(purge: [], send: [u1, email, a1].sorted()))

        // Unmerged: the user id and its email leave; the anonymous id holding the trait stays.
        state.removeLink(Self.id("user_id:u-1"), Self.id("anonymous_id:a-1"), stamp: LWWStamp(time: 4_000, tiebreak: "unmerge"), hasher: Self.hasher)
        let split = Self.views(state, names)
        #expect(split.count == 2)
        #expect(try Self.plan(Self.leeds, merged, split) == Moves(purge: [u1, email].sorted(), send: [a1]))

        // The customer moves to another store: nothing of them is held any more.
        try Self.apply(
            #"{"type":"identify","anonymousId":"a-1","traits":{"homeStore":"york-2"},"messageId":"m4","timestamp":"2026-01-01T00:00:05Z"}"#,
            at: 5_000, to: &state)
        let moved = Self.views(state, names)
        #expect(try Self.plan(Self.leeds, split, moved) == Moves(purge: [a1], send: []))
        #expect(moved.allSatisfy { !Self.holds(Self.leeds, $0) })
        #expect(
            try Self.plan(.everything, split, moved) == Moves(purge: [], send: [u1, email, a1].sorted()), "a core node holds everyone throughout")
    }

    /// A listed identifier holds its whole component; an empty scope holds nobody.
    @Test func listedIdentifiersHoldTheirComponents() throws {
        var state = ProfileState()
        try Self.apply(
            #"{"type":"identify","userId":"u-9","anonymousId":"a-9","messageId":"m1","timestamp":"2026-01-01T00:00:00Z"}"#, at: 1_000,
            to: &state)
        let view = try #require(state.view(of: Self.id("user_id:u-9")))
        #expect(Self.holds(.only([.identifiers([Self.id("anonymous_id:a-9")])]), view))
        #expect(!Self.holds(.only([.identifiers([Self.id("anonymous_id:a-8")])]), view))
        #expect(!Self.holds(.only([]), view))
        #expect(Self.holds(.everything, view))
    }

    /// Placement is the first eight bytes of the SHA-256 of the identifier's key, so every node
    /// and every build places alike (the value here was computed apart, with Python's hashlib,
    /// over the key bytes: the kind's code 1, then `u-1`).
    @Test func placementIsStableAndRangesPartitionComponents() throws {
        #expect(Scope.placement(of: Self.id("user_id:u-1")) == Self.expectedPlacementOfU1)
        // Four ranges over the whole space: every component held by exactly one of them.
        let quarter = UInt64.max / 4
        let ranges: [ClosedRange<UInt64>] = [0...quarter, quarter + 1...2 * quarter, 2 * quarter + 1...3 * quarter, 3 * quarter + 1...UInt64.max]
        let scopes = ranges.map { Scope.only([.placement($0)]) }
        var state = ProfileState()
        for delta in WorkloadGenerator.deltas(seed: 11, customers: 400, count: 2_000) { _ = state.apply(delta, hasher: Self.hasher) }
        var perRange = [0, 0, 0, 0]
        for view in state.views {
            let holders = scopes.indices.filter { Self.holds(scopes[$0], view) }
            #expect(holders.count == 1, "\(view.canonical) held by \(holders)")
            for holder in holders { perRange[holder] += 1 }
        }
        // Spread: no quarter holds less than half its share.
        #expect(perRange.allSatisfy { $0 * 8 >= state.views.count }, "\(perRange)")
    }

    /// Messages in any order give the same views, so every replica holding them decides the
    /// same scope (the decision reads nothing but the view).
    @Test func theSameMessagesInAnyOrderGiveTheSameDecisions() throws {
        let deltas = WorkloadGenerator.deltas(seed: 5, customers: 150, count: 1_500)
        let oslo = Scope.only([.trait(name: "city", value: .string("Oslo")), .identifiers([Self.id("user_id:u-7")])])
        var inOrder = ProfileState()
        for delta in deltas { _ = inOrder.apply(delta, hasher: Self.hasher) }
        var random = SplitMix64(seed: 99)
        for _ in 0..<3 {
            var shuffled = ProfileState()
            for delta in deltas.shuffled(using: &random) { _ = shuffled.apply(delta, hasher: Self.hasher) }
            let held = Set(shuffled.views.filter { Self.holds(oslo, $0) }.flatMap(\.members))
            #expect(held == Set(inOrder.views.filter { Self.holds(oslo, $0) }.flatMap(\.members)))
            #expect(!held.isEmpty && held.count < Set(inOrder.views.flatMap(\.members)).count, "some customers held, not all")
        }
    }

    /// `seen`: the customers whose messages a site took in within the window, decided on what
    /// a core replica derives from its rows — it lapses with time, moves with merges, and an
    /// erasure takes it.
    @Test func aSiteSeesTheCustomersItTookInWithinItsWindow() throws {
        let day: Int64 = 86_400_000
        let secret = [UInt8](repeating: 7, count: 32)
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: secret))
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: secret))
        func take(_ json: String, at time: Int64, into store: MemoryProfileStore) throws {
            try store.apply([try Self.parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: time)])
        }
        func component(_ text: String) throws -> Scope.Component {
            Scope.Component(view: try #require(try core.view(of: Self.id(text))), seenBy: try core.seenBy(Self.id(text)))
        }
        let kiosk = Scope.only([.seen(node: 5, withinMillis: 30 * day)])
        try take(
            #"{"type":"track","event":"Visit","anonymousId":"a-1","messageId":"k1","timestamp":"2026-01-01T00:00:00Z"}"#, at: 10 * day, into: site)
        try take(#"{"type":"identify","userId":"u-1","messageId":"w1","timestamp":"2026-01-01T00:00:00Z"}"#, at: 12 * day, into: core)
        let entries = try site.changes(after: 0, limit: 100)
        try core.applyReplicated(entries, from: 5, through: entries.last?.sequence)
        #expect(kiosk.holds(try component("anonymous_id:a-1"), now: 20 * day))
        #expect(!kiosk.holds(try component("anonymous_id:a-1"), now: 41 * day), "the window passed")
        #expect(!kiosk.holds(try component("user_id:u-1"), now: 20 * day), "seen on the web only")
        let apart = [try component("anonymous_id:a-1"), try component("user_id:u-1")]

        // The customer signs in on the web with the kiosk's anonymous id: the whole person enters.
        try take(
            #"{"type":"identify","userId":"u-1","anonymousId":"a-1","messageId":"w2","timestamp":"2026-01-01T00:00:00Z"}"#, at: 13 * day,
            into: core)
        let merged = [try component("user_id:u-1")]
        let holdings = try SiteHoldings(scope: kiosk, purposes: ["support"], policy: .builtIn)
        #expect(
            Self.moves(holdings, apart, merged, now: 20 * day)
                == Moves(purge: [], send: [Self.id("user_id:u-1"), Self.id("anonymous_id:a-1")].sorted()))

        // Erased: nothing of the kiosk's message is left to have been seen.
        _ = try core.erase(Self.id("user_id:u-1"), requestedAt: 14 * day)
        try take(#"{"type":"identify","userId":"u-1","messageId":"w3","timestamp":"2026-01-20T00:00:00Z"}"#, at: 20 * day, into: core)
        #expect(try core.seenBy(Self.id("user_id:u-1")) == SeenBy([6: 20 * day]))
        #expect(!kiosk.holds(try component("user_id:u-1"), now: 20 * day))
    }

    static let expectedPlacementOfU1: UInt64 = 3_344_275_836_949_950_266
}
