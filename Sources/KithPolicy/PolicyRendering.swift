import KithCRDT
import KithJSON
import KithProfile

/// What one read showed: field names only, for the response's `withheld` list and for the audit.
public struct ReadOutcome: Sendable, Equatable {
    public var returned: [String] = []
    public var masked: [String] = []
    public var withheld: [Withheld] = []

    public init() {}
}

extension ConsentState {
    /// The consent of a profile view (the join of its members' decisions), each decision
    /// resolved to its category through `vocabulary`. Several names may decide one category
    /// (`advertising` from one touchpoint, `ad_storage` from another): the latest decision wins,
    /// by the same rule as two decisions under one name (`ConsentRegister`).
    public init(_ head: SourceHead, vocabulary: ConsentVocabulary) {
        self.init(registers: head.consent.pairs, vocabulary: vocabulary)
    }

    /// The same, for a view as stored.
    public init(_ view: EncodedProfileView, vocabulary: ConsentVocabulary) {
        self.init(registers: view.consentRegisters.lazy.map { ($0.name, $0.register) }, vocabulary: vocabulary)
    }

    private init(registers: some Sequence<(String, ConsentRegister)>, vocabulary: ConsentVocabulary) {
        var winners: [String: (name: String, register: ConsentRegister)] = [:]
        var unmapped: [String] = []
        var restricted = false
        for (name, register) in registers {
            guard !name.hasPrefix(ConsentDecision.reservedPrefix) else {
                if name == ConsentDecision.processingCategory { restricted = !register.granted }
                continue
            }
            guard let category = vocabulary.category(of: name) else {
                unmapped.append(name)
                continue
            }
            guard let current = winners[category] else {
                winners[category] = (name, register)
                continue
            }
            var merged = current.register
            merged.merge(register)
            // The register that wins the join names the decision (identical registers: the first name).
            if merged != current.register { winners[category] = (name, register) }
        }
        self.init(
            decisions: winners.mapValues(\.register.granted), decidedBy: winners.mapValues(\.name), unmapped: unmapped, restricted: restricted)
    }
}

/// Writes a profile as one read may see it: every field through `ReadDecision.decide`, and the
/// outcome recorded as it goes. A withheld field's value is never read into the output — the
/// decision is taken before the value is touched.
public struct PolicyRenderer {
    public let decision: ReadDecision
    public private(set) var outcome = ReadOutcome()
    private var recorded: Set<String> = []

    public init(decision: ReadDecision) {
        self.decision = decision
    }

    /// The whole profile, with `withheld` and `masked` lists at the end.
    public mutating func profile(_ view: ProfileView) -> [UInt8] {
        profile(EncodedProfileView(encoding: view))
    }

    /// The same, from the view as stored: what the read shows whole (consent, events, totals) is
    /// written straight from the stored bytes; only the fields decided one by one are taken apart.
    public mutating func profile(_ view: EncodedProfileView) -> [UInt8] {
        var writer = JSONWriter(capacity: 2 * view.bytes.count + 256)
        writer.writeObject { object in
            canonical(view.canonical, into: &object)
            object.member("purpose", string: decision.purposeName)
            object.member("identifiers") { identifiers(view.members, into: &$0) }
            object.member("traits") { traits(view, into: &$0) }
            object.member("consent") { view.writeConsent(to: &$0) }
            if view.hasGroups { groups(view.groupNames, into: &object) }
            let revenue = view.aggregatesHaveRevenue
            if let aggregates = fieldDecision("aggregates") {
                object.member("aggregates") { self.aggregates(view, revenue: revenue, aggregates, into: &$0) }
            }
            object.member("events") { events(view, into: &$0) }
            accountForHiddenRevenue(aggregatesHaveRevenue: revenue)
            lists(into: &object)
        }
        return writer.bytes
    }

    /// `{"traits": {...}, "withheld": [...], "masked": [...]}`.
    public mutating func traitsResource(_ view: EncodedProfileView) -> [UInt8] {
        resource { renderer, object in object.member("traits") { renderer.traits(view, into: &$0) } }
    }

    public mutating func identifiersResource(_ members: [Identifier]) -> [UInt8] {
        resource { renderer, object in object.member("identifiers") { renderer.identifiers(members, into: &$0) } }
    }

    /// A page of events; `cursor` writes the paging member.
    public mutating func eventsResource(_ page: [EventRecord], cursor: (inout JSONWriter.ObjectWriter) -> Void) -> [UInt8] {
        resource { renderer, object in
            object.member("events") { renderer.events(page, into: &$0) }
            cursor(&object)
        }
    }

    private mutating func resource(_ body: (inout PolicyRenderer, inout JSONWriter.ObjectWriter) -> Void) -> [UInt8] {
        var writer = JSONWriter()
        var renderer = self
        writer.writeObject { object in
            object.member("purpose", string: renderer.decision.purposeName)
            body(&renderer, &object)
            renderer.lists(into: &object)
        }
        self = renderer
        return writer.bytes
    }

    // MARK: - Fields

    /// The decision for a field, recorded once; nil when it is withheld.
    private mutating func fieldDecision(_ field: String) -> FieldDecision? {
        let result = decision.decide(field)
        guard recorded.insert(field).inserted else {
            if case .withhold = result { return nil }
            return result
        }
        return record(field, result)
    }

    /// The same for a field this read decides in one place only, once: each trait and each
    /// identifier kind. It needs no entry in `recorded` (hashing every trait's name was a tenth
    /// of a policy read's rendering).
    private mutating func decideOnce(_ field: String) -> FieldDecision? {
        record(field, decision.decide(field))
    }

    private mutating func record(_ field: String, _ result: FieldDecision) -> FieldDecision? {
        switch result {
        case .allow: outcome.returned.append(field)
        case .mask: outcome.masked.append(field)
        case .withhold(let withheld):
            outcome.withheld.append(withheld)
            return nil
        }
        return result
    }

    /// A string value as a decision that is not a withholding shows it: plainly or masked.
    private static func shown(_ value: String, _ decision: FieldDecision) -> String {
        if case .mask(let rule) = decision { return rule.mask(.string(value)) }
        return value
    }

    /// `id` is shown as its identifier kind is: plainly, masked, or not at all.
    private func canonical(_ identifier: Identifier, into object: inout JSONWriter.ObjectWriter) {
        let shown = decision.decide(identifier.kind.fieldName)
        switch shown {
        case .withhold: return
        case .allow: object.member("id", string: identifier.description)
        case .mask: object.member("id", string: identifier.kind.name + ":" + Self.shown(identifier.value, shown))
        }
    }

    private mutating func identifiers(_ members: [Identifier], into writer: inout JSONWriter) {
        writer.writeObject { object in
            for kind in members.kinds {
                let values = members.filter { $0.kind == kind }.map(\.value)
                guard !values.isEmpty, let shown = decideOnce(kind.fieldName) else { continue }
                object.member(kind.name) { w in
                    w.writeArray(values) { w, value in
                        w.write(string: Self.shown(value, shown))
                    }
                }
            }
        }
    }

    private mutating func traits(_ view: EncodedProfileView, into writer: inout JSONWriter) {
        writer.writeObject { object in
            view.forEachTrait { name, value in
                let key = String(decoding: name, as: UTF8.self)
                guard let shown = decideOnce("traits." + key) else { return }
                if case .mask(let rule) = shown {
                    object.member(utf8: name) { $0.write(string: rule.mask(RawJSON.value(ofStored: value))) }
                } else {
                    object.member(utf8: name) { $0.append(value) }
                }
            }
        }
    }

    private mutating func groups(_ names: [String], into object: inout JSONWriter.ObjectWriter) {
        guard let shown = fieldDecision("groups") else { return }
        object.member("groups") { w in
            w.writeArray(names) { w, group in
                w.write(string: Self.shown(group, shown))
            }
        }
    }

    /// Counts are behavioural; revenue sums are their own field (financial by default). Masked
    /// aggregates show only that there are messages.
    private mutating func aggregates(_ view: EncodedProfileView, revenue hasRevenue: Bool, _ shown: FieldDecision, into writer: inout JSONWriter) {
        let decided = hasRevenue ? fieldDecision("revenue") : nil
        guard shown == .allow else {
            return writer.writeObject { object in object.member("messages", string: MaskRule.hidden) }
        }
        let revenue: JSONWriter.RevenueDisplay
        switch decided {
        case .allow?: revenue = .plain
        case .mask?: revenue = .replaced(by: MaskRule.hidden)
        case .withhold?, nil: revenue = .omitted
        }
        view.writeAggregates(revenue: revenue, to: &writer)
    }

    /// Revenue lives inside aggregates and events; when both are hidden it is hidden with them,
    /// and the outcome says so (as withheld with the aggregates' reason, or as masked).
    private mutating func accountForHiddenRevenue(aggregatesHaveRevenue: Bool) {
        guard aggregatesHaveRevenue, recorded.insert("revenue").inserted else { return }
        if case .withhold(let withheld) = decision.decide("revenue") { return outcome.withheld.append(withheld) }
        if var container = outcome.withheld.first(where: { $0.field == "aggregates" }) {
            container.field = "revenue"
            outcome.withheld.append(container)
        } else {
            outcome.masked.append("revenue")
        }
    }

    /// A view's recent events: as stored when the read may see them whole (the common case),
    /// else taken apart as `events(_:into:)` shows them.
    private mutating func events(_ view: EncodedProfileView, into writer: inout JSONWriter) {
        let recent = view.recentEventsSummary
        guard !recent.isEmpty, fieldDecision("events") == .allow, !recent.haveRevenue || fieldDecision("revenue") == .allow else {
            return events(view.recentEvents, into: &writer)
        }
        view.writeEvents(to: &writer)
    }

    /// Events with their properties; a revenue the read may not see is taken out of them. Masked
    /// events show only that something happened, and when.
    private mutating func events(_ records: [EventRecord], into writer: inout JSONWriter) {
        guard !records.isEmpty, let shown = fieldDecision("events") else { return writer.write(.array([])) }
        guard shown == .allow else {
            return writer.writeArray(records) { w, record in
                w.writeObject { o in
                    o.member("type", string: record.type.rawValue)
                    o.member("timestamp") { $0.write(time: record.time) }
                }
            }
        }
        let revenue = records.contains { $0.revenueMicros != nil } ? fieldDecision("revenue") : .allow
        writer.writeArray(records) { w, record in
            guard revenue != .allow, record.revenueMicros != nil else { return w.writeEvent(record) }
            var stripped = record
            stripped.properties = Self.removingRevenue(record.properties, masked: revenue != nil)
            w.writeEvent(stripped)
        }
    }

    private static func removingRevenue(_ properties: RawJSON, masked: Bool) -> RawJSON {
        guard case .object(var object) = properties.value else { return properties }
        object.members.removeAll { $0.key == "revenue" }
        if masked { object.members.append(JSONObject.Member("revenue", .string(MaskRule.hidden))) }
        return RawJSON(.object(object))
    }

    private func lists(into object: inout JSONWriter.ObjectWriter) {
        object.member("withheld") { w in
            w.writeArray(outcome.withheld) { w, item in
                w.writeObject { o in
                    o.member("field", string: item.field)
                    o.member("reason", string: item.reason.rawValue)
                    if let category = item.category { o.member("category", string: category) }
                    if let consent = item.consentCategory { o.member("consentCategory", string: consent) }
                }
            }
        }
        object.member("masked") { w in w.writeArray(outcome.masked) { $0.write(string: $1) } }
    }
}
