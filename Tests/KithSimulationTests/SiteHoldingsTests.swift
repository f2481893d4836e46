import KithCRDT
import KithCluster
import KithJSON
import KithPolicy
import KithProfile
import KithStore
import Testing

/// A scoped site kept by the updates a core makes for it (`SiteSync.update`, with `SiteHoldings`
/// deciding) and the site applies (`applySiteUpdate`), against real stores: after every change
/// at the core the site holds, row for row, what a site freshly given only the components it
/// holds now would hold — through merges, unmerges, consent withdrawn and given again, and a
/// customer moving to another store.
@Suite("Site holdings")
struct SiteHoldingsTests {
    static let secret = [UInt8](repeating: 7, count: 32)
    static let parser = SegmentMessageParser()
    static let leeds = try! SiteHoldings(
        scope: .only([.trait(name: "homeStore", value: .string("leeds-1"))]), purposes: ["analytics"], policy: .builtIn)

    static func id(_ text: String) -> Identifier { Identifier(parsing: text)! }

    /// One sync: the site reports what it holds, the core answers looking at `touched` and
    /// what the site reported, and the site applies the answer. Returns the answer.
    @discardableResult
    static func sync(_ site: MemoryProfileStore, with core: MemoryProfileStore, touched: [Identifier]) throws -> SiteSync.Answer {
        let reported = try site.heldDocuments()
        let update = try SiteSync.update(for: leeds, reported: reported, candidates: reported.map(\.identifier) + touched, in: core, now: 0)
        try site.applySiteUpdate(components: update.components(budget: .max).components, purge: update.answer.purge)
        return update.answer
    }

    /// A site given exactly the components held among `core`'s profiles.
    static func fresh(from core: MemoryProfileStore) throws -> MemoryProfileStore {
        let fresh = MemoryProfileStore(configuration: StoreConfiguration(node: 7, forgetKeySecret: Self.secret))
        for view in try core.profiles(after: nil, limit: 100) {
            guard let (members, projection) = leeds.held(Scope.Component(view: view, seenBy: try core.seenBy(view.canonical)), now: 0) else {
                continue
            }
            try fresh.join(try core.documentStates(of: members).compactMap { try $0.projected(by: projection) })
        }
        return fresh
    }

    @Test func theSiteHoldsExactlyWhatItsUpdatesSayAfterEveryChange() throws {
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Self.secret))
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Self.secret))
        let a1 = Self.id("anonymous_id:a-1"), u1 = Self.id("user_id:u-1"), u2 = Self.id("user_id:u-2")
        var time: Int64 = 1_767_225_600_000
        var answers: [SiteSync.Answer] = []

        /// One change at the core, one sync of the site, and the check; then a second sync,
        /// which finds nothing left to do.
        func change(_ touched: [Identifier], _ step: String, _ body: () throws -> Void) throws {
            try body()
            let answer = try Self.sync(site, with: core, touched: touched)
            answers.append(answer)
            #expect(try documentRows(site) == documentRows(try Self.fresh(from: core)), "after \(step): \(answer)")
            let again = try Self.sync(site, with: core, touched: touched)
            #expect(again.send.isEmpty && again.purge.isEmpty, "after \(step), a second sync: \(again)")
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
        #expect(answers.last == SiteSync.Answer(send: [[u1, a1].sorted()], purge: []))
        try change([u1], "a purchase") { try take(#"{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":20}}"#) }
        try change([u1], "analytics consent withdrawn") {
            try take(#"{"type":"identify","userId":"u-1","context":{"consent":{"categoryPreferences":{"analytics":false}}}}"#)
        }
        #expect(answers.last == SiteSync.Answer(send: [], purge: [u1, a1].sorted()))
        try change([u1], "analytics consent given again") {
            try take(#"{"type":"identify","userId":"u-1","context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#)
        }
        /// Processing restricted (Art. 18), as `POST …/restrict` writes it: a consent decision.
        func restrict(_ on: Bool) throws {
            time += 1_000
            let json = #"{"type":"identify","userId":"u-1","messageId":"r\#(time)","timestamp":"\#(ISO8601.format(millis: time))"}"#
            var delta = try Self.parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: time)
            delta.consent = [ConsentDecision(category: ConsentDecision.processingCategory, granted: !on)]
            try core.apply([delta])
        }
        try change([u1], "processing restricted") { try restrict(true) }
        #expect(answers.last == SiteSync.Answer(send: [], purge: [u1, a1].sorted()))
        try change([u1], "the restriction lifted") { try restrict(false) }
        #expect(answers.last == SiteSync.Answer(send: [[u1, a1].sorted()], purge: []))
        try change([u1, a1], "u-1 signs out: unmerged") {
            time += 1_000
            try core.removeLink(u1, a1, stamp: LWWStamp(time: time, tiebreak: "unmerge"))
        }
        #expect(answers.last?.purge == [u1])
        // The kiosk's documents keep their removed link to u-1, which must not name u-1 at the site.
        let rows = try replicatedRows(site).flatMap { $0.key + $0.value }
        let named = String(decoding: rows, as: UTF8.self).contains("u-1")
        #expect(!named, "the site's rows name the customer who left")
        try change([a1], "the visitor moves to york-2") { try take(#"{"type":"identify","anonymousId":"a-1","traits":{"homeStore":"york-2"}}"#) }
        #expect(answers.last == SiteSync.Answer(send: [], purge: [a1]))
        #expect(try replicatedRows(site).isEmpty, "nobody is left at the site")
    }

    /// A consent change that keeps the customer at the site but changes what a purpose may see:
    /// the field it may no longer see goes, though a join could not take it back (the site
    /// replaces the component).
    @Test func aConsentChangeWhileHeldReplacesWhatTheSiteMayNoLongerSee() throws {
        let holdings = try SiteHoldings(
            scope: .only([.identifiers([Self.id("user_id:u-1")])]), purposes: ["analytics", "advertising"], policy: .builtIn)
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Self.secret))
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Self.secret))
        func take(_ consent: String, _ id: String, at time: Int64, traits: String = #"{}"#) throws {
            let json =
                #"{"type":"identify","userId":"u-1","traits":\#(traits),"context":{"consent":{"categoryPreferences":{\#(consent)}}},"messageId":"\#(id)"}"#
            try core.apply([try Self.parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: time)])
        }
        func sync() throws -> SiteUpdateOutcome {
            let reported = try site.heldDocuments()
            let update = try SiteSync.update(for: holdings, reported: reported, candidates: [Self.id("user_id:u-1")], in: core, now: 0)
            return try site.applySiteUpdate(components: update.components(budget: .max).components, purge: update.answer.purge)
        }
        let birthday = { String(decoding: try replicatedRows(site).flatMap { $0.value }, as: UTF8.self).contains("1986-07-07") }
        try take(#""analytics":true,"advertising":true"#, "m1", at: 1_000, traits: #"{"birthday":"1986-07-07"}"#)
        #expect(try sync().joined == 1)
        #expect(try birthday(), "analytics sees demographics")
        // Only the consent changes: the birthday's register is the one the site holds, unmasked.
        try take(#""analytics":false,"advertising":true"#, "m2", at: 2_000)
        let outcome = try sync()
        let kept = try birthday()
        #expect(outcome.replaced == 1 && !kept, "advertising masks demographics: \(outcome)")
        #expect(throws: ReadRefusal.self) { try SiteHoldings(scope: .everything, purposes: ["nope"], policy: .builtIn) }
    }

    /// A customer the site wrote about and the core then erased: the site's own write is still
    /// in its log, unread by some member, so a purge would keep it. The core sends the forget
    /// record instead, and the site drops the customer's data and the log entry with it (else a
    /// member away past the window reads the entry after the cores compacted the record, and
    /// the customer comes back: the simulation's seed 167 of the scoped-site scenario).
    @Test func anErasureReachesASiteThatHoldsWritesNoMemberReadYet() throws {
        let holdings = try SiteHoldings(scope: .only([.identifiers([Self.id("user_id:u-1")])]), purposes: ["support"], policy: .builtIn)
        let core = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Self.secret))
        let site = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Self.secret))
        let json = #"{"type":"track","userId":"u-1","event":"Store Visit","properties":{"sku":"canary-77"},"messageId":"m-1"}"#
        let visit = try Self.parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: 1_000)
        try site.apply([visit])
        try core.apply([visit])  // as the site's push brought it
        try core.erase(Self.id("user_id:u-1"), requestedAt: 2_000)

        let reported = try site.heldDocuments()
        let update = try SiteSync.update(for: holdings, reported: reported, candidates: reported.map(\.identifier), in: core, now: 0)
        #expect(update.answer.purge == [Self.id("user_id:u-1")] && update.answer.send == [[Self.id("user_id:u-1")]])
        try site.applySiteUpdate(components: update.components(budget: .max).components, purge: update.answer.purge)

        let rows = String(decoding: try replicatedRows(site).flatMap { $0.key + $0.value }, as: UTF8.self)
        #expect(!rows.contains("canary-77") && !rows.contains("u-1"), "the erased customer's rows are gone from the site")
        let logged = try site.changes(after: 0, limit: .max).contains { if case .message = $0.change { true } else { false } }
        #expect(!logged, "the site's log no longer carries the erased customer's message")
        #expect(try site.documentStates(of: [Self.id("user_id:u-1")]).first?.forgotten != nil, "the site keeps the erasure")

        // The same for a customer outside the site's scope who came back after the erasure: the
        // record goes, the core's newer data does not.
        let json2 = #"{"type":"track","userId":"u-2","event":"Store Visit","properties":{"sku":"canary-88"},"messageId":"m-2"}"#
        let visit2 = try Self.parser.parse(try JSONParser.parse(Array(json2.utf8)), receivedAt: 3_000)
        try site.apply([visit2])
        try core.apply([visit2])
        try core.erase(Self.id("user_id:u-2"), requestedAt: 4_000)
        let back = #"{"type":"identify","userId":"u-2","traits":{"plan":"canary-99"},"messageId":"m-3"}"#
        try core.apply([try Self.parser.parse(try JSONParser.parse(Array(back.utf8)), receivedAt: 5_000)])
        let reported2 = try site.heldDocuments()
        let update2 = try SiteSync.update(for: holdings, reported: reported2, candidates: reported2.map(\.identifier), in: core, now: 0)
        #expect(update2.answer.purge == [Self.id("user_id:u-2")] && update2.answer.send == [[Self.id("user_id:u-2")]])
        try site.applySiteUpdate(components: update2.components(budget: .max).components, purge: update2.answer.purge)
        let rows2 = String(decoding: try replicatedRows(site).flatMap { $0.key + $0.value }, as: UTF8.self)
        #expect(!rows2.contains("canary-88") && !rows2.contains("canary-99") && !rows2.contains("u-2"), "\(rows2)")
        let logged2 = try site.changes(after: 0, limit: .max).contains { if case .message = $0.change { true } else { false } }
        #expect(!logged2, "the site's log no longer carries the erased customer's message")
    }
}
