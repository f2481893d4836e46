import Foundation
import KithCluster
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
        #expect(rules.priority.first == .email && rules.priority.count == IdentifierKind.builtIn.count)
        #expect(rules.isBlocked("+15550123", kind: .phone) && !rules.isBlocked("test", kind: .userId))
        #expect(try NodeConfiguration().identity.identityRules() == .builtIn)
    }

    @Test func customKindsComeIntoForceWithTheirSourcesRulesAndPriority() throws {
        let identity = try load(
            #"{"identity":{"kinds":{"loyalty_card":"digits","member_no":"uppercase"},"sources":{"traits.loyaltyCard":"loyalty_card"},"externalIdTypes":{"pos_card":"loyalty_card"},"limits":{"loyalty_card":1,"user_id":1},"priority":["loyalty_card","user_id"],"blocked":{"member_no":["X0"]}}}"#
        ).identity
        let card = IdentifierKind(custom: "loyalty_card")!
        let member = IdentifierKind(custom: "member_no")!
        let sources = try identity.identifierSources()
        #expect(sources.customKinds == [card: .digits, member: .uppercase])
        #expect(sources.kinds == IdentifierKind.people + [card, member])
        #expect(sources.externalIdTypes["pos_card"] == card && sources.externalIdTypes["member_no"] == member)
        #expect(sources.identifier(card, "12 34")?.value == "1234" && sources.identifier(member, " ab1 ")?.value == "AB1")
        let rules = try identity.identityRules()
        #expect(rules.limits == [card: 1, .userId: 1] && rules.priority.prefix(2) == [card, .userId] && rules.blockedByKind == [member: ["x0"]])
    }

    @Test func mistakesAreRefusedByName() {
        for (json, message) in [
            (#"{"identity":{"phoneRegion":"XX"}}"#, "phoneRegion \"XX\" is not in Kith's table"),
            (#"{"identity":{"sources":{"traits.card":"loyalty_card"}}}"#, "kinds are user_id, email, phone, device_id, anonymous_id"),
            (
                #"{"identity":{"kinds":{"card":"digits"},"sources":{"traits.card":"loyalty_card"}}}"#,
                "kinds are user_id, email, phone, device_id, anonymous_id, card"
            ),
            (#"{"identity":{"kinds":{"Card":"digits"}}}"#, "kind \"Card\" must be 1 to 32 of a-z"),
            (#"{"identity":{"kinds":{"email":"digits"}}}"#, "not be a built-in kind's name"),
            (#"{"identity":{"kinds":{"card":"hex"}}}"#, "kind card has form \"hex\"; forms are exact, trimmed, lowercase, uppercase, digits"),
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

@Suite("Node configuration: log truncation")
struct NodeConfigurationTruncationTests {
    @Test func maxOfflineWindowIsANumberAndAUnit() throws {
        var configuration = NodeConfiguration()
        #expect(try configuration.maxOfflineWindowMillis() == 30 * 86_400_000, "30 days by default")
        for (text, millis) in [("12h", Int64(43_200_000)), ("90m", 5_400_000), ("45s", 45_000), ("3650d", 315_360_000_000)] {
            configuration.maxOfflineWindow = text
            #expect(try configuration.maxOfflineWindowMillis() == millis, "\(text)")
        }
        for text in ["", "30", "d", "0d", "-1d", "3651d", "1.5d", "30w", " 30d"] {
            configuration.maxOfflineWindow = text
            #expect(throws: ConfigurationError.self, "\(text)") { try configuration.maxOfflineWindowMillis() }
        }
    }

    /// `maxEventAge` is off unless set, and must be longer than the offline window.
    @Test func maxEventAgeMustOutlastTheOfflineWindow() throws {
        var configuration = NodeConfiguration()
        #expect(try configuration.maxEventAgeMillis() == nil)
        configuration.maxEventAge = "400d"
        try configuration.validate()
        #expect(try configuration.maxEventAgeMillis() == 400 * 86_400_000)
        configuration.maxEventAge = "30d"
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
        configuration.maxEventAge = "soon"
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
    }

    /// Forget records are compacted only with a `maxEventAge`, under a horizon of it, the clock
    /// bound and the offline window before now.
    @Test func maxEventAgeTurnsForgetCompactionOn() throws {
        var configuration = NodeConfiguration()
        #expect(try ReplicationService.settings(for: configuration, origin: 1, policy: .builtIn).forgetCompaction == nil)
        configuration.maxEventAge = "400d"
        configuration.maxOfflineWindow = "7d"
        configuration.maxClockOffsetMillis = 250
        let bounds = try #require(try ReplicationService.settings(for: configuration, origin: 1, policy: .builtIn).forgetCompaction)
        #expect(bounds == ForgetCompactionPlan.Bounds(maxEventAge: 400 * 86_400_000, clockBound: 250, maxOfflineWindow: 7 * 86_400_000))
    }
}

@Suite("Node configuration: the environment")
struct NodeConfigurationEnvironmentTests {
    @Test func numbersComeInAndNonNumbersAreRefusedByName() throws {
        var configuration = NodeConfiguration()
        try configuration.apply(environment: [
            "KITH_REPLICAS": "3", "KITH_ANTI_ENTROPY_INTERVAL": "60", "KITH_MAX_CLOCK_OFFSET_MS": "250", "KITH_RETENTION_SWEEP_INTERVAL": "90",
            "KITH_LOG_TRUNCATION_INTERVAL": "5", "KITH_INGEST_QUEUE_LIMIT": "10", "KITH_MAX_OFFLINE_WINDOW": "7d", "KITH_MAX_EVENT_AGE": "8d",
        ])
        #expect(configuration.replicas == 3 && configuration.antiEntropyIntervalSeconds == 60 && configuration.maxClockOffsetMillis == 250)
        #expect(configuration.retentionSweepSeconds == 90 && configuration.logTruncationIntervalSeconds == 5 && configuration.ingestQueueLimit == 10)
        #expect(try configuration.maxOfflineWindowMillis() == 7 * 86_400_000 && configuration.maxEventAgeMillis() == 8 * 86_400_000)
        for (name, message) in [
            ("KITH_REPLICAS", "KITH_REPLICAS must be a number"),
            ("KITH_LOG_TRUNCATION_INTERVAL", "KITH_LOG_TRUNCATION_INTERVAL must be a number of seconds"),
        ] {
            var other = NodeConfiguration()
            #expect(throws: ConfigurationError.self) { try other.apply(environment: [name: "three"]) }
            do { try other.apply(environment: [name: "three"]) } catch { #expect("\(error)" == message) }
        }
        // Webhook retries: taken, and refused out of range.
        var retries = NodeConfiguration()
        try retries.apply(environment: ["KITH_WEBHOOK_FIRST_RETRY_MS": "20", "KITH_WEBHOOK_MAX_RETRY_MS": "50", "KITH_WEBHOOK_ATTEMPTS": "3"])
        #expect(retries.webhookRetry == WebhookRetryPolicy(firstDelayMillis: 20, maximumDelayMillis: 50, maximumAttempts: 3))
        for environment in [["KITH_WEBHOOK_ATTEMPTS": "0"], ["KITH_WEBHOOK_FIRST_RETRY_MS": "5000", "KITH_WEBHOOK_MAX_RETRY_MS": "10"]] {
            var other = NodeConfiguration()
            #expect(throws: ConfigurationError.self) { try other.apply(environment: environment) }
        }
        // Repacking once a day by default, or as often as asked; refused out of range.
        var repacking = NodeConfiguration()
        #expect(repacking.repackPeriodSeconds == 86_400)
        try repacking.apply(environment: ["KITH_REPACK_PERIOD": "604800"])
        #expect(repacking.repackPeriodSeconds == 604_800)
        var never = NodeConfiguration()
        #expect(throws: ConfigurationError.self) { try never.apply(environment: ["KITH_REPACK_PERIOD": "0"]) }
        // The sweep's share of the writer: a tenth by default, as asked; refused out of range.
        var paced = NodeConfiguration()
        #expect(paced.retentionSweepShare == 0.1)
        try paced.apply(environment: ["KITH_RETENTION_SWEEP_SHARE": "0.5"])
        #expect(paced.retentionSweepShare == 0.5)
        for value in ["0", "1.5", "half"] {
            var other = NodeConfiguration()
            #expect(throws: ConfigurationError.self) { try other.apply(environment: ["KITH_RETENTION_SWEEP_SHARE": value]) }
        }
        // The write-ahead log: on by default, off when asked; its limits taken, and refused out of range.
        var logged = NodeConfiguration()
        #expect(logged.writeAheadLog && logged.writeLogMaxAgeMillis == 15 && logged.writeLogSegmentBytes == 32 << 20)
        try logged.apply(environment: ["KITH_WRITE_AHEAD_LOG": "0", "KITH_WRITE_LOG_MAX_AGE_MILLIS": "5", "KITH_WRITE_LOG_SEGMENT_BYTES": "4096"])
        #expect(!logged.writeAheadLog && logged.writeLogMaxAgeMillis == 5 && logged.writeLogSegmentBytes == 4_096)
        for environment in [["KITH_WRITE_LOG_MAX_AGE_MILLIS": "0"], ["KITH_WRITE_LOG_SEGMENT_BYTES": "0"]] {
            var other = NodeConfiguration()
            #expect(throws: ConfigurationError.self) { try other.apply(environment: environment) }
        }
    }
}

/// The configuration's `site` section: a scoped edge site's purposes and scope.
@Suite("Node configuration: scoped site")
struct NodeConfigurationSiteTests {
    let identity = NodeConfigurationIdentityTests()
    static let edge = #""role":"edge","gossip":"127.0.0.1:7953""#

    /// Loaded and checked as `kith serve` does (the cluster key from the environment).
    func validated(_ json: String) throws -> NodeConfiguration {
        var configuration = try identity.load(json)
        configuration.clusterKey = String(repeating: "0f", count: 32)
        try configuration.validate()
        return configuration
    }

    @Test func aSiteComesIntoForceWithItsOwnNodeInSeenClauses() throws {
        let configuration = try validated(
            #"{\#(Self.edge),"site":{"purposes":["analytics"],"scope":[{"trait":"homeStore","equals":"store-12"},{"seenWithinDays":30},{"identifiers":["user_id:u-1"]}]}}"#
        )
        let settings = try ReplicationService.settings(for: configuration, origin: 0x5151, policy: .builtIn)
        #expect(settings.site?.purposes == ["analytics"])
        #expect(
            settings.site?.scope
                == .only([
                    .trait(name: "homeStore", value: .string("store-12")), .seen(node: 0x5151, withinMillis: 30 * 86_400_000),
                    .identifiers([Identifier(kind: .userId, value: "u-1")!]),
                ]))
        #expect(try ReplicationService.settings(for: NodeConfiguration(), origin: 1, policy: .builtIn).site == nil)
    }

    @Test func siteMistakesAreRefusedByName() throws {
        for (json, message) in [
            (#"{\#(Self.edge),"site":{"purposes":[],"scope":[{"seenWithinDays":3}]}}"#, "site.purposes must name at least one purpose"),
            (#"{\#(Self.edge),"site":{"purposes":["support"],"scope":[]}}"#, "site.scope must have at least one clause"),
            (#"{\#(Self.edge),"site":{"purposes":["support"],"scope":[{"seenWithinDays":0}]}}"#, "seenWithinDays must be 1 to 3650"),
            (
                #"{\#(Self.edge),"site":{"purposes":["support"],"scope":[{"seenWithinDays":3,"trait":"x","equals":"y"}]}}"#,
                "must have exactly one of trait and equals, seenWithinDays, identifiers"
            ),
            (#"{\#(Self.edge),"site":{"purposes":["support"],"scope":[{"trait":"homeStore"}]}}"#, "needs both trait and equals"),
            (#"{\#(Self.edge),"site":{"purposes":["support"],"scope":[{"identifiers":["nokind"]}]}}"#, "\"nokind\" is not an identifier"),
            (#"{"site":{"purposes":["support"],"scope":[{"seenWithinDays":3}]}}"#, "site is for an edge node that replicates"),
            (#"{\#(Self.edge),"site":{"purposes":["support"],"scope":[{"seen":3}]}}"#, "unknown setting \"site.scope[].seen\""),
            (#"{\#(Self.edge),"site":{"purpose":["support"]}}"#, "unknown setting \"site.purpose\""),
        ] {
            do {
                _ = try validated(json)
                Issue.record("accepted \(json)")
            } catch {
                #expect("\(error)".contains(message), "\(json): \(error)")
            }
        }
        // A purpose the policy does not define is refused when the node starts, by name.
        let unknown = try validated(#"{\#(Self.edge),"site":{"purposes":["billing"],"scope":[{"seenWithinDays":3}]}}"#)
        #expect(throws: ConfigurationError.self) { try ReplicationService.settings(for: unknown, origin: 1, policy: .builtIn) }
    }
}
