import Foundation
import KithCompression
import KithCrypto
import KithHTTP
import KithJSON
import KithNet
import KithProfile

extension Node {
    /// Segment's HTTP Tracking API: one message, or a batch; all of it is applied or none.
    func ingest(_ request: HTTPRequest, kind: MessageType?, respond: @escaping @Sendable (HTTPResponse) -> Void) {
        func refuse(_ status: Int, _ code: String, _ message: String) {
            respond(.json(status, Self.segmentError(code, message)))
        }
        var body = request.body
        if request.header("content-encoding")?.lowercased() == "gzip" {
            do { body = try Gzip.decompress(body, limit: Self.maximumBatchBytes) } catch {
                return refuse(400, error.code == .tooLarge ? "payload_too_large" : "invalid_gzip", "the gzip body is \(error.code.rawValue)")
            }
        }
        guard body.count <= Self.maximumBatchBytes else { return refuse(400, "payload_too_large", "a request body may be at most 500 KB") }
        let json: JSONValue
        do { json = try JSONParser.parse(body) } catch { return refuse(400, "invalid_json", "\(error)") }
        guard authorizedWriteKey(request, json) else { return refuse(401, "invalid_write_key", "a valid write key is required") }

        let messages: [JSONValue]
        if let kind {
            messages = [json]
            _ = kind
        } else {
            guard case .array(let batch)? = json["batch"] else { return refuse(400, "invalid_request", "a batch needs a \"batch\" array") }
            guard batch.count <= Self.maximumBatchMessages else { return refuse(400, "payload_too_large", "a batch may hold at most 2500 messages") }
            messages = batch
        }
        let receivedAt = Int64(Date().timeIntervalSince1970 * 1_000)
        var deltas: [ProfileDelta] = []
        deltas.reserveCapacity(messages.count)
        for (index, message) in messages.enumerated() {
            guard RawJSON(message).bytes.count <= Self.maximumMessageBytes else {
                return refuse(400, "payload_too_large", "message \(index) is larger than 32 KB")
            }
            do {
                deltas.append(try parser.parse(message, defaultType: kind, receivedAt: receivedAt))
            } catch {
                return refuse(400, error.code.rawValue, (messages.count > 1 ? "message \(index): " : "") + error.message)
            }
        }
        guard committer.backlog < Self.maximumBacklog else {
            var response = HTTPResponse.json(429, Self.segmentError("too_many_requests", "the node is shedding load; retry"))
            response.headers.append(HTTPHeader("Retry-After", "1"))
            return respond(response)
        }
        metrics.receivedMessages.wrappingAdd(deltas.count, ordering: .relaxed)
        committer.submit(deltas) { result in
            switch result {
            case .success: respond(.json(200, Array(#"{"success":true}"#.utf8)))
            case .failure(let error):
                respond(.json(503, Self.segmentError("unavailable", "the messages were not stored: \(error)")))
            }
        }
    }

    /// The write key as the basic-auth user name (empty password), or `writeKey` in the body.
    private func authorizedWriteKey(_ request: HTTPRequest, _ json: JSONValue) -> Bool {
        var candidate: [UInt8]?
        if let authorization = request.header("authorization"), authorization.lowercased().hasPrefix("basic "),
            let decoded = Data(base64Encoded: String(authorization.dropFirst(6)).trimmingCharacters(in: .whitespaces))
        {
            candidate = Array(decoded.prefix { $0 != UInt8(ascii: ":") })
        } else if let key = json["writeKey"]?.stringValue {
            candidate = Array(key.utf8)
        }
        guard let candidate, !candidate.isEmpty else { return false }
        // Compare against every key in constant time, so timing reveals nothing about them.
        return writeKeys.reduce(false) { found, key in Crypto.constantTimeEquals(key, candidate) || found }
    }

    /// `GET /v1/profiles/{identifier}` for a caller with a bearer token.
    func readProfile(_ request: HTTPRequest, identifier text: String, respond: @Sendable (HTTPResponse) -> Void) {
        guard authorizedToken(request) else {
            return respond(.error(401, code: "unauthorized", message: "a valid bearer token is required"))
        }
        guard let decoded = Self.percentDecoded(text), let identifier = Identifier(parsing: decoded) else {
            return respond(.error(400, code: "invalid_identifier", message: "identifiers look like user_id:u-1, anonymous_id:a-9 or email:a@example.com"))
        }
        do {
            guard let view = try store.view(of: identifier) else {
                return respond(.error(404, code: "not_found", message: "no profile has that identifier"))
            }
            respond(.json(200, view.jsonBytes))
        } catch {
            respond(.error(500, code: "storage_error", message: "the profile could not be read"))
        }
    }

    private func authorizedToken(_ request: HTTPRequest) -> Bool {
        guard let authorization = request.header("authorization"), authorization.lowercased().hasPrefix("bearer ") else { return false }
        let presented = Crypto.sha256(Array(authorization.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8))
        return tokenHashes.reduce(false) { found, hash in Crypto.constantTimeEquals(hash, presented) || found }
    }

    static func segmentError(_ code: String, _ message: String) -> [UInt8] {
        var writer = JSONWriter()
        writer.writeObject { object in
            object.member("code", string: code)
            object.member("message", string: message)
        }
        return writer.bytes
    }

    /// RFC 3986 percent-decoding of a path segment; nil for malformed escapes or invalid UTF-8.
    static func percentDecoded(_ text: String) -> String? {
        var decoded: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                    let value = Self.bytes(hex: String(decoding: [high, low], as: UTF8.self))?.first
                else { return nil }
                decoded.append(value)
            } else {
                decoded.append(byte)
            }
        }
        return String(validating: decoded, as: UTF8.self)
    }

    func metricsResponse() -> HTTPResponse {
        var text = metrics.prometheusText()
        text += "# HELP kith_open_connections Open HTTP connections.\n# TYPE kith_open_connections gauge\n"
        text += "kith_open_connections \(server.openConnections)\n"
        text += "# HELP kith_commits_total Write transactions committed.\n# TYPE kith_commits_total counter\n"
        text += "kith_commits_total \(committer.commits.load(ordering: .relaxed))\n"
        text += "# HELP kith_applied_messages_total Messages committed (new, duplicate or forgotten).\n# TYPE kith_applied_messages_total counter\n"
        text += "kith_applied_messages_total \(committer.committedMessages.load(ordering: .relaxed))\n"
        text += "# HELP kith_lmdb_size_bytes Size of the LMDB data file.\n# TYPE kith_lmdb_size_bytes gauge\n"
        text += "kith_lmdb_size_bytes \(store.environment.fileSize())\n"
        return HTTPResponse(status: 200, headers: [HTTPHeader("Content-Type", "text/plain; version=0.0.4")], body: Array(text.utf8))
    }
}
