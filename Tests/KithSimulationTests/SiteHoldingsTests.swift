import KithCRDT
import KithCluster
import KithJSON
import KithPolicy
import KithProfile
import KithStore
import Testing

/// A scoped site kept by the plans `SiteHoldings` makes, carried out against real stores: after
/// every change at the core the site holds, row for row, what a site freshly given only the
/// components it holds now would hold — through merges, unmerges, consent withdrawn and given
/// again, and a customer moving to another store.
@Suite("Site holdings")
struct SiteHoldingsTests {
    static let secret = [UInt8](repeating: 7, count: 32)
    static let parser = SegmentMessageParser()
    static let leeds = try! SiteHoldings(
        scope: .only([.trait(name: "homeStore", value: .string("leeds-1"))]), purposes: ["analytics"], policy: .builtIn)

    static func id(_ text: String) -> Identifier { Identifier(parsing: text)! }

    /// The components holding `identifiers` at `core`, each once.
    static func components(_ core: MemoryProfileStore, _ identifiers: [Identifier]) throws -> [Scope.Component] {
        var seen: Set<Identifier> = []
        return try identifiers.compactMap { identifier in
            guard let view = try core.view(of: identifier), seen.insert(view.canonical).inserted else { return nil }
            return Scope.Component(view: view, seenBy: try core.seenBy(identifier))
        }
    }

    /// Sends `site` the projected documents of the components held among `components`.
    static func send(_ components: [Scope.Component], from core: MemoryProfileStore, to site: MemoryProfileStore) throws {
        for component in components where leeds.holds(component, now: 0) {
            let keys = component.view.members.map { core.engine.hasher.forgetKeyBytes(for: $0) }
            let projection = leeds.documentProjection(of: component)
            try site.join(try core.documentStates(for: keys).compactMap { try $0.projected(by: projection) })
        }
    }

    @Test func theSiteHoldsExactlyWhatItsPlansSayAfterEveryChange() throws {
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Self.secret))
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Self.secret))
        let a1 = Self.id("anonymous_id:a-1"), u1 = Self.id("user_id:u-1"), u2 = Self.id("user_id:u-2")
        var time: Int64 = 1_767_225_600_000
        var plans: [SitePlan] = []

        /// One change at the core, the plan for it carried out at the site, and the check.
        func change(_ touched: [Identifier], _ step: String, _ body: () throws -> Void) throws {
            let before = try Self.components(core, touched)
            try body()
            let after = try Self.components(core, touched)
            let plan = Self.leeds.plan(before: before, after: after, now: 0)
            plans.append(plan)
            if !plan.purge.isEmpty { try site.purge(plan.purge) }
            try Self.send(after, from: core, to: site)

            let fresh = MemoryProfileStore(configuration: StoreConfiguration(node: 7, forgetKeySecret: Self.secret))
            try Self.send(try Self.components(core, try core.profiles(after: nil, limit: 100).map(\.canonical)), from: core, to: fresh)
            let documents = { (store: MemoryProfileStore) in try replicatedRows(store).filter { $0.key.first == UInt8(Table.documents.rawValue) } }
            #expect(try documents(site) == documents(fresh), "after \(step): \(plan)")
        }
        func take(_ json: String) throws {
            time += 1_000
            let message = String(json.dropLast()) + #","messageId":"m\#(time)","timestamp":"\#(ISO8601.format(millis: time))"}"#
            try core.apply([try Self.parser.parse(try JSONParser.parse(Array(message.utf8)), receivedAt: time)])
        }

        try change([a1], "a kiosk visitor of leeds-1 with analytics consent") {
            try take(
                #"{"type":"identify","anonymousId":"a-1","traits":{"homeStore":"leeds-1"},"context":{"consent":{"categoryPreferences":{"analytics":true}}}}"#
            )
        }
        try change([u1, u2], "two web customers") {
            try take(#"{"type":"identify","userId":"u-1","traits":{"email":"ann@example.com","plan":"plus"}}"#)
            try take(#"{"type":"identify","userId":"u-2","traits":{"plan":"free"}}"#)
        }
        try change([u1, a1], "u-1 signs in on the kiosk") { try take(#"{"type":"identify","userId":"u-1","anonymousId":"a-1"}"#) }
        #expect(plans.last == SitePlan(purge: [], send: [u1, a1].sorted()))
        try change([u1], "a purchase") { try take(#"{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":20}}"#) }
        try change([u1], "analytics consent withdrawn") {
            try take(#"{"type":"identify","userId":"u-1","context":{"consent":{"categoryPreferences":{"analytics":false}}}}"#)
        }
        #expect(plans.last == SitePlan(purge: [u1, a1].sorted(), send: []))
        try change([u1], "analytics consent given again") {
            try take(#"{"type":"identify","userId":"u-1","context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#)
        }
        try change([u1, a1], "u-1 signs out: unmerged") {
            time += 1_000
            try core.removeLink(u1, a1, stamp: LWWStamp(time: time, tiebreak: "unmerge"))
        }
        #expect(plans.last?.purge == [u1])
        // The kiosk's documents keep their removed link to u-1, which must not name u-1 at the site.
        let rows = try replicatedRows(site).flatMap { $0.key + $0.value }
        let named = String(decoding: rows, as: UTF8.self).contains("u-1")
        #expect(!named, "the site's rows name the customer who left")
        try change([a1], "the visitor moves to york-2") { try take(#"{"type":"identify","anonymousId":"a-1","traits":{"homeStore":"york-2"}}"#) }
        #expect(plans.last == SitePlan(purge: [a1], send: []))
        #expect(try replicatedRows(site).isEmpty, "nobody is left at the site")
    }

    /// A consent change that keeps the customer at the site but changes what a purpose may see
    /// is a purge and a resend: the join could not take a field back.
    @Test func aConsentChangeWhileHeldPurgesAndSendsAgain() throws {
        let site = try SiteHoldings(
            scope: .only([.identifiers([Self.id("user_id:u-1")])]), purposes: ["analytics", "advertising"], policy: .builtIn)
        func component(_ consent: String) throws -> Scope.Component {
            var head = SourceHead()
            let json =
                #"{"type":"identify","userId":"u-1","traits":{"birthday":"1986-07-07"},"context":{"consent":{"categoryPreferences":{\#(consent)}}},"messageId":"m1"}"#
            head.absorb(try Self.parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: 1_000), historyLimit: 10)
            return Scope.Component(view: ProfileView(canonical: Self.id("user_id:u-1"), members: [Self.id("user_id:u-1")], head: head))
        }
        let both = try component(#""analytics":true,"advertising":true"#), advertisingOnly = try component(#""analytics":false,"advertising":true"#)
        #expect(site.projection(of: both).decide("traits.birthday") == .allow)
        #expect(site.projection(of: advertisingOnly).decide("traits.birthday") != .allow, "advertising masks demographics")
        #expect(
            site.plan(before: [both], after: [advertisingOnly], now: 0) == SitePlan(purge: [Self.id("user_id:u-1")], send: [Self.id("user_id:u-1")]))
        #expect(site.plan(before: [both], after: [both], now: 0) == SitePlan(purge: [], send: [Self.id("user_id:u-1")]))
        #expect(throws: ReadRefusal.self) { try SiteHoldings(scope: .everything, purposes: ["nope"], policy: .builtIn) }
    }
}
