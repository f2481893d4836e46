import KithJSON
import KithProfile

/// The policy's `retention` list: each rule names events, traits or a category, a number of
/// days, and the purpose that justifies keeping the data that long.
///
/// ```json
/// "retention": [
///   {"events": ["Order Completed"], "days": 2557, "purpose": "tax"},
///   {"category": "behavioral", "days": 396, "purpose": "analytics"},
///   {"traits": ["favouriteColour"], "days": 730, "purpose": "personalization"},
///   {"consent": ["advertising"], "days": 395, "purpose": "advertising"},
///   {"messages": ["identify", "alias"], "days": 730, "purpose": "support"}
/// ]
/// ```
///
/// A category rule covers the events when the policy puts `events` in that category, and every
/// trait in it. A rule by name wins over a category rule; of two rules naming the same data, the
/// longer keeps it. A consent rule makes grants of those consent categories lapse (under any
/// name that decides them): the customer is asked again. A messages rule keeps the records of
/// identify, group and alias calls (when, where, the consent they carried) that long; what they
/// set follows the trait and consent rules, and the links they made stay.
extension Policy {
    static let longestRetentionDays = 36_500

    static func retention(
        _ value: JSONValue?, fields: [String: String], unknownFields: UnknownFieldRule, declared: Set<String>, purposes: Set<String>,
        vocabulary: ConsentVocabulary
    )
        throws(PolicyError) -> RetentionRules
    {
        var rules = RetentionRules()
        for (name, category) in fields where name.hasPrefix("traits.") { rules.traitCategories[String(name.dropFirst(7))] = category }
        if case .category(let category) = unknownFields { rules.unnamedTraitCategory = category }
        guard let value else { return rules }
        guard case .array(let items) = value else { throw PolicyError("retention", "must be a list of rules") }
        for (index, item) in items.enumerated() {
            let path = "retention[\(index)]"
            guard case .object(let rule) = item else { throw PolicyError(path, "a rule is an object") }
            try refuseUnknownKeys(rule, path, ["events", "traits", "category", "consent", "messages", "days", "purpose"])
            guard case .number(let number)? = rule["days"], let days = Int(number.literal), (1...longestRetentionDays).contains(days) else {
                throw PolicyError("\(path).days", "must be a whole number of days from 1 to \(longestRetentionDays)")
            }
            guard let purpose = rule["purpose"]?.stringValue, purposes.contains(purpose) else {
                throw PolicyError("\(path).purpose", "must name a purpose of the policy (the one that justifies keeping the data)")
            }
            let keep = RetentionRules.Keep(millis: Int64(days) * 86_400_000, purpose: purpose)
            let targets = ["events", "traits", "category", "consent", "messages"].filter { rule[$0] != nil }
            guard targets.count == 1 else {
                throw PolicyError(path, "a rule names exactly one of events, traits, category, consent or messages")
            }
            if let messages = rule["messages"] {
                for name in try strings(messages, "\(path).messages") {
                    guard let type = MessageType(rawValue: name), RetentionRules.recordTypes.contains(type) else {
                        throw PolicyError(
                            "\(path).messages",
                            "must name message types among \(RetentionRules.recordTypes.map(\.rawValue).joined(separator: ", ")) (\"\(name)\" is not one; events are kept by events and category rules)"
                        )
                    }
                    rules.messagesByType[type] = keep.longer(rules.messagesByType[type])
                }
            } else if let consent = rule["consent"] {
                for category in try strings(consent, "\(path).consent") {
                    guard !vocabulary.names(of: category).isEmpty else {
                        throw PolicyError("\(path).consent", "must name consent categories of the policy (\"\(category)\" is not one)")
                    }
                    for name in vocabulary.names(of: category) { rules.grantsByName[name] = keep.longer(rules.grantsByName[name]) }
                }
            } else if let events = rule["events"] {
                for name in try strings(events, "\(path).events") { rules.eventsByName[name] = keep.longer(rules.eventsByName[name]) }
            } else if let traits = rule["traits"] {
                for name in try strings(traits, "\(path).traits") { rules.traitsByName[name] = keep.longer(rules.traitsByName[name]) }
            } else if let category = rule["category"]?.stringValue, declared.contains(category) {
                rules.traitsByCategory[category] = keep.longer(rules.traitsByCategory[category])
                if fields["events"] == category { rules.events = keep.longer(rules.events) }
            } else {
                throw PolicyError("\(path).category", "must name a declared category")
            }
        }
        return rules
    }
}
