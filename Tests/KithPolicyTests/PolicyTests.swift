import Foundation
import KithCRDT
import KithJSON
import KithProfile
import Testing

@testable import KithPolicy

@Suite struct PolicyParsingTests {
    @Test func theBuiltInPolicyIsTheExampleFile() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../cluster-configs/policy.example.json")
        let example = try Policy(parsing: Array(try Data(contentsOf: url)))
        #expect(example == Policy.builtIn)
        #expect(Policy.builtIn.purposes.keys.sorted() == ["advertising", "analytics", "personalization", "support"])
        #expect(Policy.builtIn.consentCategories["advertising"]?.googleConsentMode.contains("ad_user_data") == true)
        #expect(Policy.builtIn.consentCategories["analytics"]?.tcfPurposes == [7, 8, 9, 10])
    }

    @Test func segmentsReservedTraitsHaveDefaultCategories() throws {
        let policy = try Policy(parsing: Array(#"{"version":1,"purposes":{"p":{}}}"#.utf8))
        #expect(policy.category(of: "traits.email") == "contact")
        #expect(policy.category(of: "traits.phone") == "contact")
        #expect(policy.category(of: "traits.address") == "contact")
        #expect(policy.category(of: "traits.birthday") == "demographic")
        #expect(policy.category(of: "traits.age") == "demographic")
        #expect(policy.category(of: "traits.gender") == "demographic")
        #expect(policy.category(of: "events") == "behavioral")
        #expect(policy.category(of: "revenue") == "financial")
        #expect(policy.category(of: "traits.favouriteColour") == "sensitive", "unknown fields default to sensitive")
        #expect(policy.masks["traits.email"] == .email)
    }

    @Test func mistakesAreRefusedWithTheirPath() {
        let cases: [(String, String)] = [
            (#"[]"#, "a policy is a JSON object"),
            (#"{"version":2,"purposes":{"p":{}}}"#, "version: must be 1"),
            (#"{"version":1,"purposes":{"p":{}},"colour":1}"#, "colour: is not a policy setting"),
            (#"{"version":1,"purposes":{}}"#, "purposes: a policy needs at least one purpose"),
            (#"{"version":1,"fields":{"traits.x":"secret"},"purposes":{"p":{}}}"#, "fields.traits.x: must name a declared category"),
            (
                #"{"version":1,"fields":{"nickname":"contact"},"purposes":{"p":{}}}"#,
                "fields.nickname: " + "a field is traits.NAME, identifiers.KIND (a built-in or custom kind), events, aggregates, groups or revenue"
            ),
            (
                #"{"version":1,"fields":{"identifiers.Card":"contact"},"purposes":{"p":{}}}"#,
                "fields.identifiers.Card: "
                    + "a field is traits.NAME, identifiers.KIND (a built-in or custom kind), events, aggregates, groups or revenue"
            ),
            (#"{"version":1,"unknownFields":"maybe","purposes":{"p":{}}}"#, #"unknownFields: must be "withhold" or a declared category"#),
            (
                #"{"version":1,"consentCategories":{"ads":{"tcf":[12]}},"purposes":{"p":{}}}"#,
                "consentCategories.ads.tcf: TCF v2.2 purposes are numbered 1 to 11"
            ),
            (
                #"{"version":1,"consentCategories":{"ads":{"googleConsentMode":["ads"]}},"purposes":{"p":{}}}"#,
                #"consentCategories.ads.googleConsentMode: "ads" is not a Google Consent Mode type"#
            ),
            (#"{"version":1,"purposes":{"p":{"consent":["ads"]}}}"#, #"purposes.p.consent: "ads" is not in consentCategories"#),
            (#"{"version":1,"purposes":{"p":{"unknownConsent":"maybe"}}}"#, #"purposes.p.unknownConsent: must be "opt-in" or "opt-out""#),
            (#"{"version":1,"purposes":{"p":{"categories":{"contact":"show"}}}}"#, "purposes.p.categories.contact: must be allow, mask or withhold"),
            (#"{"version":1,"purposes":{"p":{"categories":{"secret":"allow"}}}}"#, "purposes.p.categories.secret: is not a declared category"),
            (#"{"version":1,"purposes":{"p":{},"p":{}}}"#, "invalid JSON: duplicateKey at byte 32"),
            (
                #"{"version":1,"masks":{"traits.email":"scramble"},"purposes":{"p":{}}}"#,
                "masks.traits.email: must be one of email, last-two-digits, year-only, redact"
            ),
            (#"{"version":1,"categories":["a","a"],"purposes":{"p":{}}}"#, "categories: must be a non-empty list without repeats"),
        ]
        for (text, expected) in cases {
            #expect(throws: PolicyError.self) { try Policy(parsing: Array(text.utf8)) }
            do {
                _ = try Policy(parsing: Array(text.utf8))
            } catch {
                #expect(error.description == expected, "\(text)")
            }
        }
    }

    /// Retention rules resolve to what each piece of data needs: by name over category, the
    /// longer of two, categories through the policy's own fields.
    @Test func retentionRulesResolveAgainstTheFields() throws {
        let policy = try Policy(
            parsing: Array(
                #"""
                {"version":1,"fields":{"traits.favouriteColour":"behavioral"},
                 "purposes":{"tax":{},"analytics":{},"support":{}},
                 "retention":[{"events":["Order Completed"],"days":2557,"purpose":"tax"},
                              {"category":"behavioral","days":396,"purpose":"analytics"},
                              {"events":["Order Completed"],"days":30,"purpose":"support"},
                              {"traits":["email"],"days":730,"purpose":"support"},
                              {"messages":["identify","alias"],"days":400,"purpose":"support"},
                              {"messages":["identify"],"days":30,"purpose":"analytics"}]}
                """#.utf8))
        let day: Int64 = 86_400_000
        let rules = policy.retention
        #expect(rules.keep(forEvent: "Order Completed") == .init(millis: 2_557 * day, purpose: "tax"))
        #expect(rules.keep(forEvent: "Page Viewed") == .init(millis: 396 * day, purpose: "analytics"), "events are behavioral")
        #expect(rules.keep(forTrait: "favouriteColour")?.purpose == "analytics" && rules.keep(forTrait: "email")?.purpose == "support")
        #expect(rules.keep(forTrait: "plan") == nil)
        // Identify and alias records by type, the longer rule of two; group's kept as long as the profile.
        #expect(
            rules.messagesByType == [.identify: .init(millis: 400 * day, purpose: "support"), .alias: .init(millis: 400 * day, purpose: "support")])
        #expect(rules.keep(forMessage: LedgerEntry(type: .identify, name: "", time: 0, revenueMicros: nil))?.purpose == "support")
        #expect(rules.keep(forMessage: LedgerEntry(type: .track, name: "Order Completed", time: 0, revenueMicros: nil))?.purpose == "tax")
        #expect(rules.keep(forMessage: LedgerEntry(type: .group, name: "", time: 0, revenueMicros: nil)) == nil)
        #expect(try Policy(parsing: Array(#"{"version":1,"purposes":{"p":{}}}"#.utf8)).retention.isEmpty)
        // A consent rule covers every name that decides its category: aliases, Consent Mode
        // types, TCF purposes the category alone has, in any case.
        let text = Policy.builtInText.replacingOccurrences(
            of: #""masks": {"#, with: #""retention": [{"consent": ["advertising"], "days": 395, "purpose": "advertising"}], "masks": {"#)
        let withConsent = try Policy(parsing: Array(text.utf8))
        let grants = withConsent.retention
        for name in ["advertising", "Marketing", "C0004", "ad_storage"] {
            #expect(grants.keep(forGrant: name) == .init(millis: 395 * day, purpose: "advertising"), "\(name)")
        }
        #expect(grants.keep(forGrant: "analytics") == nil && grants.keep(forGrant: "Personalization") == nil)
        for (retention, message) in [
            (#"{"events":["E"],"days":0,"purpose":"p"}"#, "retention[0].days: must be a whole number of days from 1 to 36500"),
            (
                #"{"events":["E"],"days":1,"purpose":"q"}"#,
                "retention[0].purpose: must name a purpose of the policy (the one that justifies keeping the data)"
            ),
            (
                #"{"events":["E"],"traits":["t"],"days":1,"purpose":"p"}"#,
                "retention[0]: a rule names exactly one of events, traits, category, consent or messages"
            ),
            (
                #"{"messages":["track"],"days":1,"purpose":"p"}"#,
                #"retention[0].messages: must name message types among identify, group, alias ("track" is not one; events are kept by events and category rules)"#
            ),
            (
                #"{"consent":["telepathy"],"days":1,"purpose":"p"}"#,
                #"retention[0].consent: must name consent categories of the policy ("telepathy" is not one)"#
            ),
            (#"{"category":"secret","days":1,"purpose":"p"}"#, "retention[0].category: must name a declared category"),
            (#"{"events":["E"],"days":1,"purpose":"p","why":"x"}"#, "retention[0].why: is not a policy setting"),
        ] {
            #expect(throws: PolicyError.self) { try Policy(parsing: Array(#"{"version":1,"purposes":{"p":{}},"retention":[\#(retention)]}"#.utf8)) }
            do {
                _ = try Policy(parsing: Array(#"{"version":1,"purposes":{"p":{}},"retention":[\#(retention)]}"#.utf8))
            } catch {
                #expect(error.description == message, "\(retention)")
            }
        }
    }

    /// A custom kind's identifiers are a field like any other: named, or unknown until named.
    @Test func customKindsAreFieldsOfTheirOwn() throws {
        let policy = try Policy(parsing: Array(#"{"version":1,"fields":{"identifiers.loyalty_card":"identity"},"purposes":{"p":{}}}"#.utf8))
        #expect(policy.category(of: "identifiers.loyalty_card") == "identity")
        #expect(policy.category(of: "identifiers.member_no") == "sensitive")
    }

    @Test func defaultsForUndeclaredCategoriesAreDropped() throws {
        let policy = try Policy(parsing: Array(#"{"version":1,"categories":["contact"],"purposes":{"p":{}}}"#.utf8))
        #expect(policy.category(of: "traits.email") == "contact")
        #expect(policy.category(of: "events") == nil, "no sensitive category declared: unknown and undeclared fields are withheld")
    }
}

@Suite struct ReadDecisionTests {
    let policy = Policy.builtIn
    let analyst = Principal(name: "bi", role: .reader, purposes: ["analytics"])
    let twoPurposes = Principal(name: "crm", role: .reader, purposes: ["support", "advertising"])

    @Test func purposesAreCheckedBeforeAnyField() throws {
        #expect(throws: ReadRefusal.purposeRequired) {
            try ReadDecision(policy: policy, principal: twoPurposes, requestedPurpose: nil, consent: .init())
        }
        #expect(throws: ReadRefusal.purposeNotHeld("analytics")) {
            try ReadDecision(policy: policy, principal: twoPurposes, requestedPurpose: "analytics", consent: .init())
        }
        #expect(throws: ReadRefusal.unknownPurpose("lunch")) {
            try ReadDecision(policy: policy, principal: twoPurposes, requestedPurpose: "lunch", consent: .init())
        }
        let single = try ReadDecision(policy: policy, principal: analyst, requestedPurpose: nil, consent: .init())
        #expect(single.purposeName == "analytics", "a principal's single purpose is implied")
    }

    @Test func consentGatesThePurpose() throws {
        func decide(_ purpose: String, _ consent: [String: Bool], _ field: String = "events") throws -> FieldDecision {
            let principal = Principal(name: "p", role: .reader, purposes: [purpose])
            return try ReadDecision(policy: policy, principal: principal, requestedPurpose: purpose, consent: ConsentState(decisions: consent))
                .decide(field)
        }
        #expect(try decide("analytics", [:]) == .allow, "analytics is opt-out: unknown consent permits")
        #expect(
            try decide("analytics", ["analytics": false])
                == .withhold(Withheld(field: "events", reason: .consentDenied, category: "behavioral", consentCategory: "analytics")))
        #expect(
            try decide("advertising", [:])
                == .withhold(Withheld(field: "events", reason: .consentUnknown, category: "behavioral", consentCategory: "advertising")))
        #expect(try decide("advertising", ["advertising": true]) == .allow)
        #expect(try decide("advertising", ["advertising": true], "traits.email") == .mask(.email))
        #expect(
            try decide("advertising", ["advertising": true], "revenue")
                == .withhold(Withheld(field: "revenue", reason: .purposeExcludesCategory, category: "financial")))
        #expect(try decide("support", ["advertising": false, "analytics": false]) == .allow, "support needs no consent")
    }

    @Test func restrictionWithholdsEverythingExceptFromThePrivacyRole() throws {
        let restricted = ConsentState(decisions: [:], restricted: true)
        let reader = try ReadDecision(policy: policy, principal: analyst, requestedPurpose: nil, consent: restricted)
        #expect(reader.decide("traits.plan") == .withhold(Withheld(field: "traits.plan", reason: .restricted, category: "behavioral")))
        let officer = Principal(name: "dpo", role: .privacy, purposes: ["support"])
        #expect(try ReadDecision(policy: policy, principal: officer, requestedPurpose: nil, consent: restricted).decide("traits.plan") == .allow)
    }

    @Test func unknownFieldsFollowTheStatedDefault() throws {
        let strict = try Policy(
            parsing: Array(#"{"version":1,"unknownFields":"withhold","purposes":{"p":{"categories":{"sensitive":"allow"}}}}"#.utf8))
        let principal = Principal(name: "p", role: .reader, purposes: ["p"])
        let decision = try ReadDecision(policy: strict, principal: principal, requestedPurpose: "p", consent: .init())
        #expect(decision.decide("traits.shoeSize") == .withhold(Withheld(field: "traits.shoeSize", reason: .unknownField)))
        let lenient = try Policy(parsing: Array(#"{"version":1,"purposes":{"p":{"categories":{"sensitive":"allow"}}}}"#.utf8))
        #expect(try ReadDecision(policy: lenient, principal: principal, requestedPurpose: "p", consent: .init()).decide("traits.shoeSize") == .allow)
    }
}

@Suite struct MaskingTests {
    @Test func masksShowOnlyWhatTheRuleAllows() {
        #expect(MaskRule.email.mask("alice@example.com") == "a***@example.com")
        #expect(MaskRule.email.mask("@example.com") == "***")
        #expect(MaskRule.email.mask("no-at-sign") == "***")
        #expect(MaskRule.lastTwoDigits.mask("+44 7700 900123") == "+** **** ****23")
        #expect(MaskRule.lastTwoDigits.mask("12") == "***")
        #expect(MaskRule.lastTwoDigits.mask(.number(JSONNumber(5551234))) == "*****34")
        // Non-ASCII text around the digits stays as it is.
        #expect(MaskRule.lastTwoDigits.mask("☎ ٣ 0７7-55 12 €") == "☎ ٣ *７*-** 12 €")
        #expect(MaskRule.yearOnly.mask("1984-05-02") == "1984")
        #expect(MaskRule.yearOnly.mask("1984-05-02T10:00:00Z") == "1984")
        #expect(MaskRule.yearOnly.mask("May 2, 1984") == "***")
        #expect(MaskRule.redact.mask("anything") == "***")
        #expect(MaskRule.email.mask(.object(JSONObject())) == "***", "structured values are hidden whole")
    }
}
