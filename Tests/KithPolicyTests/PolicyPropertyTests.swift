import KithCRDT
import KithJSON
import KithPolicy
import KithProfile
import KithTestSupport
import Testing

/// Random profiles, consent states, principals and policies: whatever the combination, a
/// withheld field's value appears nowhere in the response, a masked field's full value neither,
/// and every field is accounted for exactly once.
@Suite struct PolicyPropertyTests {
    static let traitPool = ["email", "phone", "birthday", "address", "plan", "shoeSize", "age", "nickname"]
    static let consentPool = ["analytics", "advertising", "personalization"]

    @Test(arguments: 0..<300) func withheldValuesNeverAppear(seed: UInt64) throws {
        var random = SplitMix64(seed: seed &* 7_919 &+ 13)
        let policy = try Self.randomPolicy(&random)
        let (view, canaries) = try Self.randomProfile(&random, seed: seed)
        var consent = ConsentState(restricted: random.next() % 5 == 0)
        for category in Self.consentPool where random.next() % 3 != 0 { consent.decisions[category] = random.next() % 2 == 0 }
        let purposes = policy.purposes.keys.sorted()
        let purpose = purposes[Int(random.next() % UInt64(purposes.count))]
        let role = Role.allCases[Int(random.next() % 4)]
        let principal = Principal(name: "p", role: role, purposes: purposes.filter { $0 == purpose || random.next() % 2 == 0 })
        let decision = try ReadDecision(policy: policy, principal: principal, requestedPurpose: purpose, consent: consent)

        var renderer = PolicyRenderer(decision: decision)
        let body = String(decoding: renderer.profile(view), as: UTF8.self)
        let outcome = renderer.outcome
        #expect((try? JSONParser.parse(Array(body.utf8))) != nil, "the response is JSON")

        let withheld = Set(outcome.withheld.map(\.field))
        let masked = Set(outcome.masked)
        let returned = Set(outcome.returned)
        #expect(withheld.isDisjoint(with: masked) && withheld.isDisjoint(with: returned) && masked.isDisjoint(with: returned))
        #expect(
            withheld.count == outcome.withheld.count && masked.count == outcome.masked.count && returned.count == outcome.returned.count,
            "each field is listed once")
        for (field, values) in canaries {
            let shown = returned.contains(field) || masked.contains(field)
            #expect(shown || withheld.contains(field), "\(field) is accounted for")
            if decision.decide(field) != .allow {
                #expect(!returned.contains(field), "\(field) is returned against the policy")
            } else if field != "revenue" {  // revenue is hidden with its containers (aggregates, events)
                #expect(returned.contains(field), "\(field) is allowed but not returned")
            }
            guard !returned.contains(field) else { continue }
            for value in values {
                #expect(
                    !body.contains(value),
                    "seed \(seed): \(field) is \(withheld.contains(field) ? "withheld" : "masked") but its value is in the body")
            }
        }
        if withheld.contains("events") || masked.contains("events") {
            #expect(!body.contains("note-\(seed)-"), "event properties of a withheld or masked history")
        }
    }

    /// A read the policy lets see everything shows each profile as stored: the same members,
    /// in the same bytes, as the view's own JSON, with the purpose and two empty lists added.
    @Test func aReadAllowedEverythingShowsTheViewAsStored() throws {
        let access = Policy.defaultCategories.map { "\"\($0)\":\"allow\"" }.joined(separator: ",")
        let policy = try Policy(parsing: Array(#"{"version":1,"purposes":{"all":{"categories":{\#(access)}}}}"#.utf8))
        let principal = Principal(name: "p", role: .reader, purposes: ["all"])
        var state = ProfileState()
        for delta in WorkloadGenerator.deltas(seed: 77, customers: 40, count: 2_000) { state.apply(delta, hasher: PlainHasher()) }
        #expect(state.views.count > 20 && state.views.contains { !$0.head.recent.isEmpty && !$0.head.consent.isEmpty })
        for view in state.views {
            let decision = try ReadDecision(
                policy: policy, principal: principal, requestedPurpose: "all", consent: ConsentState(view.head, vocabulary: policy.consentVocabulary))
            var renderer = PolicyRenderer(decision: decision)
            let body = String(decoding: renderer.profile(EncodedProfileView(encoding: view)), as: UTF8.self)
            let stored = String(decoding: view.jsonBytes, as: UTF8.self)
            let idEnd = try #require(stored.range(of: #","identifiers":"#)).lowerBound
            let expected = stored[..<idEnd] + #","purpose":"all""# + stored[idEnd...].dropLast() + #","withheld":[],"masked":[]}"#
            #expect(body == expected)
            #expect(renderer.outcome.withheld.isEmpty && renderer.outcome.masked.isEmpty)
        }
    }

    /// A field's decision is its category's access for the purpose (the category named for it,
    /// else the unknown-field rule's), whatever the policy; and it follows the policy when the
    /// policy is changed.
    @Test(arguments: 0..<100) func decisionsFollowCategoryAndAccess(seed: UInt64) throws {
        var random = SplitMix64(seed: seed &* 104_729 &+ 7)
        var policy = try Self.randomPolicy(&random)
        let fields =
            Self.traitPool.map { "traits." + $0 } + [
                "traits.unnamed", "events", "aggregates", "revenue", "groups", "identifiers.email", "identifiers.user_id",
            ]
        func expected(_ field: String, _ purpose: String, blanket: Withheld?) -> FieldDecision {
            var category = policy.fields[field]
            if category == nil, case .category(let unknown) = policy.unknownFields { category = unknown }
            if var blanket {
                blanket.field = field
                blanket.category = category
                return .withhold(blanket)
            }
            guard let category else { return .withhold(Withheld(field: field, reason: .unknownField)) }
            switch policy.purposes[purpose]!.access[category] ?? .withhold {
            case .allow: return .allow
            case .mask: return .mask(policy.masks[field] ?? .redact)
            case .withhold: return .withhold(Withheld(field: field, reason: .purposeExcludesCategory, category: category))
            }
        }
        func check() throws {
            for purpose in policy.purposes.keys.sorted() {
                let principal = Principal(name: "p", role: .reader, purposes: [purpose])
                let granted = ConsentState(decisions: Dictionary(uniqueKeysWithValues: Self.consentPool.map { ($0, true) }))
                let open = try ReadDecision(policy: policy, principal: principal, requestedPurpose: purpose, consent: granted)
                let restricted = try ReadDecision(
                    policy: policy, principal: principal, requestedPurpose: purpose, consent: ConsentState(restricted: true))
                for field in fields {
                    #expect(open.decide(field) == expected(field, purpose, blanket: nil), "\(purpose) \(field)")
                    #expect(restricted.decide(field) == expected(field, purpose, blanket: Withheld(field: "", reason: .restricted)))
                }
            }
        }
        try check()
        policy.unknownFields = seed % 2 == 0 ? .withhold : .category(Policy.defaultCategories[0])
        try check()
        policy.fields["traits.unnamed"] = Policy.defaultCategories[Int(seed % UInt64(Policy.defaultCategories.count))]
        policy.fields["events"] = nil
        try check()
        let name = policy.purposes.keys.sorted()[0]
        policy.purposes[name]!.access = Dictionary(uniqueKeysWithValues: Policy.defaultCategories.map { ($0, Access.mask) })
        try check()
    }

    /// A policy over the default categories with random mappings, masks, consent and access.
    static func randomPolicy(_ random: inout SplitMix64) throws -> Policy {
        let categories = Policy.defaultCategories
        func pick<T>(_ items: [T]) -> T { items[Int(random.next() % UInt64(items.count))] }
        var fields = JSONObject()
        for trait in traitPool where random.next() % 2 == 0 { fields.members.append(.init("traits." + trait, .string(pick(categories)))) }
        for field in ["events", "aggregates", "revenue", "identifiers.email", "identifiers.user_id"] where random.next() % 3 == 0 {
            fields.members.append(.init(field, .string(pick(categories))))
        }
        var masks = JSONObject()
        for field in ["traits.email", "traits.phone", "traits.birthday", "traits.plan", "identifiers.email"] where random.next() % 2 == 0 {
            masks.members.append(.init(field, .string(pick(MaskRule.allCases).rawValue)))
        }
        var consentCategories = JSONObject()
        for category in consentPool { consentCategories.members.append(.init(category, .object(JSONObject()))) }
        var purposes = JSONObject()
        for name in ["p1", "p2", "p3"] {
            var access = JSONObject()
            for category in categories where random.next() % 4 != 0 {
                access.members.append(.init(category, .string(pick(["allow", "mask", "withhold"]))))
            }
            let consent = consentPool.filter { _ in random.next() % 3 == 0 }.map { JSONValue.string($0) }
            purposes.members.append(
                .init(
                    name,
                    [
                        "consent": .array(consent), "unknownConsent": .string(pick(["opt-in", "opt-out"])), "categories": .object(access),
                    ]))
        }
        let document: JSONValue = [
            "version": 1, "fields": .object(fields), "masks": .object(masks), "unknownFields": .string(pick(["withhold", "sensitive", "contact"])),
            "consentCategories": .object(consentCategories), "purposes": .object(purposes),
        ]
        return try Policy(json: document)
    }

    /// A profile whose every value is a canary unique to the seed; returns it with the canaries
    /// of each field.
    static func randomProfile(_ random: inout SplitMix64, seed: UInt64) throws -> (ProfileView, [String: [String]]) {
        let parser = SegmentMessageParser()
        var head = SourceHead()
        var canaries: [String: [String]] = [:]
        let userId = "u-canary-\(seed)"
        let email = "mail\(seed)canary@example.com"
        var members = [Identifier(kind: .userId, value: userId)!]
        canaries["identifiers.user_id"] = [userId]
        if random.next() % 2 == 0 {
            members.append(Identifier(kind: .email, value: email)!)
            canaries["identifiers.email"] = [email]
        }
        var traits = JSONObject()
        for trait in traitPool where random.next() % 3 != 0 {
            let value: String
            switch trait {
            case "email": value = "t\(seed)canary@example.com"
            case "phone": value = "+1 555 \(1_000_000 + seed * 7)"
            case "birthday": value = "19\(10 + seed % 80)-0\(1 + seed % 9)-1\(seed % 10)T00:00:0\(seed % 10).123Z"
            default: value = "\(trait)-canary-\(seed)"
            }
            traits.members.append(.init(trait, .string(value)))
            canaries["traits." + trait] = [value]
        }
        var messages: [JSONValue] = [
            [
                "type": "identify", "messageId": "m-identify", "userId": .string(userId), "traits": .object(traits),
                "timestamp": "2026-01-01T00:00:00Z",
            ]
        ]
        for index in 0..<Int(random.next() % 4) {
            let revenue = "\(900_000 + seed).\(index)7"
            messages.append([
                "type": "track", "messageId": .string("m-\(index)"), "userId": .string(userId), "event": .string("Event \(index)"),
                "properties": ["note": .string("note-\(seed)-\(index)"), "revenue": .number(JSONNumber(literal: revenue)!)],
                "timestamp": .string("2026-01-0\(index + 2)T00:00:00Z"),
            ])
            canaries["events", default: []].append("note-\(seed)-\(index)")
            canaries["revenue", default: []].append(revenue)
        }
        canaries["aggregates"] = []  // always present (counts); its event names are not secret from it
        for message in messages { head.absorb(try parser.parse(message, receivedAt: 1_767_225_600_000), historyLimit: 10) }
        return (ProfileView(canonical: members[0], members: members.sorted(), head: head), canaries)
    }
}
