import Foundation
import KithProfile
import Testing

@testable import KithNode

/// The configuration's identity section: what it puts in force, and every mistake refused by name.
@Suite("Node configuration: identity")
struct NodeConfigurationIdentityTests {
    func load(_ json: String) throws -> NodeConfiguration {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-config-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }  // a temporary file; a leftover is harmless
        guard FileManager.default.createFile(atPath: path, contents: Data(json.utf8)) else { throw ConfigurationError("cannot write \(path)") }
        return try NodeConfiguration.load(file: path)
    }

    @Test func sourcesTypesAndARegionComeIntoForce() throws {
        let configuration = try load(
            #"{"identity":{"phoneRegion":"gb","sources":{"traits.mobile":"phone","properties.till":"device_id"},"externalIdTypes":{"ga_client_id":"anonymous_id"}}}"#
        )
        let sources = try configuration.identity.identifierSources()
        #expect(sources.phoneRegion == PhoneNumber.Region(code: "GB"))
        #expect(sources.sources.map(\.path) == IdentifierSources.builtIn.sources.map(\.path) + ["properties.till", "traits.mobile"])
        #expect(sources.externalIdTypes["ga_client_id"] == .anonymousId && sources.externalIdTypes["email"] == .email)
        let custom = try load(#"{"identity":{"phoneCountryCode":"420","phoneTrunkPrefix":""}}"#).identity.identifierSources()
        #expect(custom.phoneRegion?.countryCode == "420")
        #expect(try NodeConfiguration().identity.identifierSources() == .builtIn)
    }

    @Test func identityRulesComeIntoForce() throws {
        let rules = try load(
            #"{"identity":{"rulesVersion":3,"blocked":{"*":["none"],"email":["noreply@x.io"]},"blockedPatterns":{"phone":["\\+1555\\d+"]},"limits":{"anonymous_id":5},"priority":["email"]}}"#
        ).identity.identityRules()
        #expect(rules.version == 3 && rules.blockedValues == ["none"] && rules.blockedByKind == [.email: ["noreply@x.io"]])
        #expect(rules.limits == [.anonymousId: 5], "limits given replace the default one user_id")
        let windowed = try load(#"{"identity":{"limits":{"anonymous_id":5},"limitWindowDays":{"anonymous_id":7}}}"#).identity.identityRules()
        #expect(windowed.windows == [.anonymousId: 7 * 86_400_000])
        #expect(rules.priority.first == .email && rules.priority.count == IdentifierKind.allCases.count)
        #expect(rules.isBlocked("+15550123", kind: .phone) && !rules.isBlocked("test", kind: .userId))
        #expect(try NodeConfiguration().identity.identityRules() == .builtIn)
    }

    @Test func mistakesAreRefusedByName() {
        for (json, message) in [
            (#"{"identity":{"phoneRegion":"XX"}}"#, "phoneRegion \"XX\" is not in Kith's table"),
            (#"{"identity":{"sources":{"traits.card":"loyalty_card"}}}"#, "kinds are user_id, email, phone, device_id, anonymous_id"),
            (#"{"identity":{"sources":{"userId":"user_id"}}}"#, "must be traits.NAME, context.PATH or properties.NAME"),
            (#"{"identity":{"externalIdTypes":{"x":"nope"}}}"#, "externalIdTypes.x names kind \"nope\""),
            (#"{"identity":{"phoneCountryCode":"4a"}}"#, "phoneCountryCode must be 1 to 3 digits"),
            (#"{"identity":{"colour":"blue"}}"#, "unknown setting \"identity.colour\""),
            (#"{"identity":{"limits":{"email":0}}}"#, "the limit of email must be at least 1"),
            (#"{"identity":{"blockedPatterns":{"phone":["("]}}}"#, "is not a regular expression"),
            (#"{"identity":{"priority":["email","email"]}}"#, "priority names a kind twice"),
            (#"{"identity":{"limitWindowDays":{"email":7}}}"#, "the window of email must be positive and go with a limit of email"),
            (
                #"{"identity":{"limits":{"anonymous_id":5},"limitWindowDays":{"anonymous_id":0}}}"#,
                "limitWindowDays.anonymous_id must be 1 to 3650 days"
            ),
            (#"{"identity":{"blocked":{"card":["x"]}}}"#, "blocked names kind \"card\""),
        ] {
            do {
                try load(json).validate()
                Issue.record("\(json) was accepted")
            } catch {
                #expect("\(error)".contains(message), "\(json): \(error)")
            }
        }
    }
}
