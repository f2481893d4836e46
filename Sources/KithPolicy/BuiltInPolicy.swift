extension Policy {
    /// The policy a node uses when none is configured: the same document as
    /// `cluster-configs/policy.example.json` (a test holds them equal).
    public static let builtIn: Policy = {
        do { return try Policy(parsing: Array(builtInText.utf8)) } catch { fatalError("the built-in policy is invalid: \(error)") }
    }()

    static let builtInText = #"""
        {
          "version": 1,
          "categories": ["contact", "demographic", "behavioral", "financial", "sensitive", "identity"],
          "fields": {
            "traits.email": "contact",
            "traits.phone": "contact",
            "traits.address": "contact",
            "traits.birthday": "demographic",
            "traits.age": "demographic",
            "traits.gender": "demographic",
            "traits.plan": "behavioral",
            "events": "behavioral",
            "revenue": "financial"
          },
          "unknownFields": "sensitive",
          "consentCategories": {
            "analytics": {"aliases": ["performance", "C0002"], "tcf": [7, 8, 9, 10], "googleConsentMode": ["analytics_storage"]},
            "advertising": {
              "aliases": ["marketing", "targeting", "C0004"], "tcf": [1, 2, 3, 4, 7],
              "googleConsentMode": ["ad_storage", "ad_user_data", "ad_personalization"]
            },
            "personalization": {"tcf": [1, 5, 6], "googleConsentMode": ["personalization_storage"]},
            "functional": {"aliases": ["C0003"], "tcf": [1], "googleConsentMode": ["functionality_storage", "security_storage"]}
          },
          "purposes": {
            "support": {
              "consent": [],
              "categories": {
                "contact": "allow", "demographic": "allow", "behavioral": "allow", "financial": "allow",
                "identity": "allow", "sensitive": "allow"
              }
            },
            "analytics": {
              "consent": ["analytics"],
              "unknownConsent": "opt-out",
              "categories": {
                "contact": "mask", "demographic": "allow", "behavioral": "allow", "financial": "allow", "identity": "allow"
              }
            },
            "personalization": {
              "consent": ["personalization"],
              "unknownConsent": "opt-in",
              "categories": {"contact": "mask", "demographic": "allow", "behavioral": "allow", "identity": "allow"}
            },
            "advertising": {
              "consent": ["advertising"],
              "unknownConsent": "opt-in",
              "categories": {"contact": "mask", "demographic": "mask", "behavioral": "allow", "identity": "allow"}
            }
          },
          "masks": {
            "traits.email": "email",
            "identifiers.email": "email",
            "traits.phone": "last-two-digits",
            "identifiers.phone": "last-two-digits",
            "traits.birthday": "year-only"
          }
        }
        """#
}
