import KithCRDT
import KithJSON
import KithPolicy
import KithProfile
import Testing

/// The names touchpoints send consent under, resolved to the policy's categories at read time.
@Suite("Consent vocabulary")
struct ConsentVocabularyTests {
    let vocabulary = Policy.builtIn.consentVocabulary

    @Test func namesAliasesAndFrameworkTypesResolveWithoutCase() {
        for (name, category) in [
            ("advertising", "advertising"), ("Advertising", "advertising"), ("ADVERTISING", "advertising"), ("Analytics", "analytics"),
            ("C0004", "advertising"), ("c0004", "advertising"), ("Targeting", "advertising"), ("C0002", "analytics"),
            ("ad_storage", "advertising"), ("AD_USER_DATA", "advertising"), ("analytics_storage", "analytics"),
            ("personalization_storage", "personalization"), ("tcf:8", "analytics"), ("tcf:2", "advertising"), ("tcf:5", "personalization"),
        ] {
            #expect(vocabulary.category(of: name) == category, "\(name)")
        }
    }

    /// A framework name several categories need decides none of them: a guess would apply a
    /// decision the customer did not make.
    @Test func ambiguousAndUnknownNamesStayUnmapped() {
        for name in ["tcf:1", "tcf:7", "tcf:12", "newsletter", "C0001", "", "advertisingx", "Advertising "] {
            #expect(vocabulary.category(of: name) == nil, "\(name)")
        }
        // Case folding is ASCII only, the same everywhere: a non-ASCII look-alike is another name.
        #expect(vocabulary.category(of: "ADVERTİSİNG") == nil)
    }

    @Test func aPolicyGivingOneNameToTwoCategoriesIsRefused() {
        let text = #"""
            {"version":1,"consentCategories":{"ads":{"aliases":["Marketing"]},"email":{"aliases":["marketing"]}},"purposes":{"p":{}}}
            """#
        #expect(throws: PolicyError("consentCategories", "\"marketing\" names two categories (names and aliases are compared without case)")) {
            try Policy(parsing: Array(text.utf8))
        }
        let reserved = #"{"version":1,"consentCategories":{"ads":{"aliases":["kith:x"]}},"purposes":{"p":{}}}"#
        #expect(throws: PolicyError.self) { try Policy(parsing: Array(reserved.utf8)) }
        // An explicit alias wins over a framework type another category maps.
        let explicit = try? Policy(
            parsing: Array(
                #"{"version":1,"consentCategories":{"ads":{"googleConsentMode":["ad_storage"]},"other":{"aliases":["ad_storage"]}},"purposes":{"p":{}}}"#
                    .utf8))
        #expect(explicit?.consentVocabulary.category(of: "ad_storage") == "other")
    }

    func head(_ decisions: [(name: String, granted: Bool, time: Int64)]) -> SourceHead {
        var head = SourceHead()
        for (index, decision) in decisions.enumerated() {
            head.consent.merge(
                key: decision.name,
                ConsentRegister(
                    granted: decision.granted, stamp: LWWStamp(time: decision.time, tiebreak: "m\(index)"), source: "web"))
        }
        return head
    }

    /// Several names decide one category: the latest decision wins, as between two decisions
    /// under one name, and the state says which name decided.
    @Test func theLatestDecisionAmongTheNamesOfACategoryWins() {
        let state = ConsentState(
            head([("Advertising", true, 100), ("ad_storage", false, 200), ("analytics", false, 50), ("C0002", true, 60), ("newsletter", true, 10)]),
            vocabulary: vocabulary)
        #expect(state.decisions == ["advertising": false, "analytics": true])
        #expect(state.decidedBy == ["advertising": "ad_storage", "analytics": "C0002"])
        #expect(state.unmapped == ["newsletter"])
        // At the same time, denied wins whichever name it came under.
        let tied = ConsentState(head([("advertising", true, 300), ("Advertising", false, 300)]), vocabulary: vocabulary)
        #expect(tied.decisions["advertising"] == false && tied.decidedBy["advertising"] == "Advertising")
        let other = ConsentState(head([("Advertising", false, 300), ("advertising", true, 300)]), vocabulary: vocabulary)
        #expect(other.decisions["advertising"] == false)
    }

    /// The purpose reads the resolved decision: a capitalised grant shows the data, a
    /// capitalised denial says `consent_denied`, and only a category nobody decided is unknown.
    @Test func aReadForAPurposeUsesTheResolvedDecision() throws {
        let reader = Principal(name: "ads", role: .reader, purposes: ["advertising"])
        func decision(_ head: SourceHead) throws -> ReadDecision {
            try ReadDecision(
                policy: .builtIn, principal: reader, requestedPurpose: nil, consent: ConsentState(head, vocabulary: vocabulary))
        }
        #expect(try decision(head([("Advertising", true, 1)])).decide("traits.plan") == .allow)
        guard case .withhold(let denied) = try decision(head([("Advertising", false, 1)])).decide("traits.plan") else {
            Issue.record("a denial did not withhold")
            return
        }
        #expect(denied.reason == .consentDenied && denied.consentCategory == "advertising")
        guard case .withhold(let unknown) = try decision(head([("newsletter", true, 1)])).decide("traits.plan") else {
            Issue.record("an unmapped grant was applied")
            return
        }
        #expect(unknown.reason == .consentUnknown)
    }
}
