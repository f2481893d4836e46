import Foundation
import KithAPI
import KithCRDT
import KithCrypto
import KithNode
import KithPolicy
import KithProfile
import KithStore
import KithStoreLMDB

/// The in-process read phases, on a store an apply phase (this run's or an earlier one's) built.
func measureReads(_ store: LMDBProfileStore, options: Options, receivedAt: Int64) throws {
    // 3. Random point reads by user id, each stored view rendered as the reader's JSON.
    // Every customer's user id once, in a random order, then again: reads spread over the whole
    // key space (a small set of ids read over and over would stay in the CPU's caches and
    // flatter the figure by 10-15 %).
    var random = SplitMix64(seed: 2_025)
    var found = 0, done = 0, bytes = 0
    let identifiers = (0..<options.customers).map { Identifier(kind: .userId, value: String(format: "u-%07d", $0))! }.shuffled(using: &random)
    let readTime = try seconds {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(options.readSeconds * 1e9)
        while done < options.reads {
            if let view = try store.encodedView(of: identifiers[done % identifiers.count]) {
                found += 1
                bytes += view.jsonBytes.count
            }
            done += 1
            if done & 1_023 == 0 && DispatchTime.now().uptimeNanoseconds > deadline { break }
        }
    }
    report("read.profiles_per_s", Double(done) / readTime)
    report("read.hit_ratio", Double(found) / Double(done), decimals: 3)
    report("read.mean_json_bytes", Double(bytes) / Double(max(found, 1)))

    // The same reads without rendering: what fetching a row (LMDB get, pseudonym, AES-GCM
    // open, the encoding checked) costs, so the rest of a read is the JSON.
    var fetched = 0, fetchedBytes = 0
    let fetchTime = try seconds {
        while fetched < done {
            if let view = try store.encodedView(of: identifiers[fetched % identifiers.count]) { fetchedBytes += view.bytes.count }
            fetched += 1
        }
    }
    report("read.fetch_only_profiles_per_s", Double(fetched) / fetchTime)
    _ = fetchedBytes

    // 4. The same reads as a node answers them: the policy for a purpose that masks contact
    // data, the ETag over the filtered body, and a record handed to the (real, durable) audit.
    let auditDirectory = options.dataDirectory + "-audit"
    try? FileManager.default.removeItem(atPath: auditDirectory)
    let audit = try ReadAudit(path: auditDirectory, retentionDays: 30, log: Log())
    let hasher = HMACForgetKeyHasher(secret: [UInt8](repeating: 42, count: 32))
    let analyst = Principal(name: "bench", role: .reader, purposes: ["analytics"])
    var policyDone = 0, policyBytes = 0
    let policyTime = try seconds {
        while policyDone < done {
            if let view = try store.encodedView(of: identifiers[policyDone % identifiers.count]) {
                let decision = try ReadDecision(
                    policy: .builtIn, principal: analyst, requestedPurpose: "analytics",
                    consent: ConsentState(view, vocabulary: Policy.builtIn.consentVocabulary))
                var renderer = PolicyRenderer(decision: decision)
                let body = renderer.profile(view)
                policyBytes += body.count + Crypto.sha256(body).count
                try audit.record(
                    AuditRecord(
                        time: receivedAt, principal: analyst.name, purpose: "analytics", node: "bench", resource: "profile",
                        subjects: view.members.map(hasher.forgetKeyBytes(for:)), outcome: renderer.outcome))
            }
            policyDone += 1
        }
        try audit.flush()
    }
    audit.stop()
    report("read.policy_profiles_per_s", Double(policyDone) / policyTime)
    report("read.policy_cost_pct", (1 - (Double(policyDone) / policyTime) / (Double(done) / readTime)) * 100, decimals: 1)
    print("read.policy_audit_records: \(audit.written.load(ordering: .relaxed))")
    _ = policyBytes
    try measureCryptoCosts()
}

/// What libcrypto costs a point read of a sealed row, apart from LMDB and rendering: opening a
/// view-sized box under a customer's own key (a new key schedule every time, as random reads
/// meet them) or under the key used last, and the pseudonym (HMAC) of an identifier.
func measureCryptoCosts() throws {
    var random = SplitMix64(seed: 7)
    func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
    let customers = 100_000, opens = 500_000
    let keys = (0..<customers).map { _ in AESGCM.Key(bytes(AESGCM.keySize))! }
    let plaintext = bytes(400), associatedData = bytes(17)
    let context = AESGCMContext()
    var nonces = NonceSource()
    let boxes = try keys.map { try context.seal(plaintext, key: $0, nonce: try nonces.next(), associatedData: associatedData) }
    let order = (0..<customers).shuffled(using: &random)
    var opened = 0
    let newKeyTime = try seconds {
        for index in 0..<opens {
            opened += try context.open(boxes[order[index % customers]][...], key: keys[order[index % customers]], associatedData: associatedData)
                .count
        }
    }
    report("read.cost.aes_open_new_key_ns", newKeyTime / Double(opens) * 1e9)
    let sameKeyBoxes = try (0..<1_000).map { _ in try context.seal(plaintext, key: keys[0], nonce: try nonces.next(), associatedData: associatedData)
    }
    let sameKeyTime = try seconds {
        for index in 0..<opens {
            opened += try context.open(sameKeyBoxes[index % sameKeyBoxes.count][...], key: keys[0], associatedData: associatedData).count
        }
    }
    report("read.cost.aes_open_same_key_ns", sameKeyTime / Double(opens) * 1e9)
    let mac = HMACKey(bytes(32)).makeContext()
    let identifiers = (0..<customers).map { Array("\u{1}u-\(String(format: "%07d", $0))".utf8) }
    var pseudonym = [UInt8](repeating: 0, count: 16)
    let macTime = seconds {
        for index in 0..<opens {
            identifiers[order[index % customers]].withUnsafeBytes { input in pseudonym.withUnsafeMutableBytes { mac.authenticate(input, into: $0) } }
            opened &+= Int(pseudonym[0])
        }
    }
    report("read.cost.pseudonym_ns", macTime / Double(opens) * 1e9)
    precondition(opened > 0)
}
