import KithCRDT

/// Computes and checks frame tags under the cluster keys. The shell implements it with
/// HMAC-SHA256 from libcrypto; this module never does cryptography itself.
public protocol FrameAuthenticator: Sendable {
    /// The key new frames are tagged with.
    var sendingKeyId: UInt8 { get }
    func knows(keyId: UInt8) -> Bool
    /// A 32-byte tag of `message` under key `keyId`.
    func tag(keyId: UInt8, _ message: [UInt8]) -> [UInt8]
    /// Whether `tag` is right for `message` under `keyId`, compared in constant time.
    func verify(keyId: UInt8, _ message: [UInt8], tag: ArraySlice<UInt8>) -> Bool
}

/// One frame on a peer connection (docs/wire-format.md has the layout byte by byte).
public struct Frame: Equatable, Sendable {
    public static let magic: [UInt8] = [0x4B, 0x54]  // "KT"
    /// 6: document states may carry link records (`LedgerRow`), which a peer of 5 cannot read.
    public static let version: UInt8 = 6
    public static let headerSize = 28
    public static let tagSize = 32
    public static let nonceSize = 16
    /// The type of the hello frame that opens each direction of a connection.
    public static let helloType: UInt8 = 16

    public var type: UInt8
    public var sender: UInt64
    public var sequence: UInt64
    public var payload: [UInt8]

    public init(type: UInt8, sender: UInt64, sequence: UInt64, payload: [UInt8]) {
        self.type = type
        self.sender = sender
        self.sequence = sequence
        self.payload = payload
    }

    /// Frame types a decoder accepts.
    static func isKnown(_ type: UInt8) -> Bool { type == helloType || PeerMessage.knownTags.contains(type) }
}

/// Why a frame was refused. Any of these closes the connection; none changes membership or data.
public enum FrameError: Error, Equatable, Sendable {
    case badMagic, unsupportedVersion(UInt8), unknownType(UInt8), unknownKey(UInt8), reservedBitsSet
    case tooLarge(Int), badSequence(expected: UInt64, got: UInt64), authenticationFailed, expectedHello, malformedHello
}

/// Writes the frames of one direction of a connection: sequence numbers from 1, each frame
/// tagged together with the receiver's nonce (so a frame recorded on one connection is worthless
/// on any other).
public struct FrameEncoder: Sendable {
    let authenticator: any FrameAuthenticator
    let sender: UInt64
    /// The receiver's nonce; zeros until its hello arrives (only the first hello is sent so).
    public var receiverNonce = [UInt8](repeating: 0, count: Frame.nonceSize)
    private var nextSequence: UInt64 = 1

    public init(authenticator: any FrameAuthenticator, sender: UInt64) {
        self.authenticator = authenticator
        self.sender = sender
    }

    public mutating func encode(type: UInt8, payload: [UInt8]) -> [UInt8] {
        var writer = BinaryWriter(capacity: Frame.headerSize + payload.count + Frame.tagSize)
        writer.write(raw: Frame.magic)
        writer.write(byte: Frame.version)
        writer.write(byte: type)
        let keyId = authenticator.sendingKeyId
        writer.write(byte: keyId)
        writer.write(raw: [0, 0, 0])
        writer.write(bigEndian: sender)
        writer.write(bigEndian: nextSequence)
        writer.write(raw: withUnsafeBytes(of: UInt32(payload.count).bigEndian, Array.init))
        writer.write(raw: payload)
        nextSequence += 1
        let tag = authenticator.tag(keyId: keyId, receiverNonce + writer.bytes)
        writer.write(raw: tag)
        return writer.bytes
    }
}

/// Reads the frames of one direction of a connection, strictly: the header is checked and the
/// length bounded before the payload is buffered; the tag is checked before anything is decoded;
/// sequence numbers must run 1, 2, 3, … with no gap or repeat (a replay within the connection).
public struct FrameDecoder: Sendable {
    let authenticator: any FrameAuthenticator
    let maximumPayload: Int
    /// This side's nonce, sent in its hello: every frame after the first must be tagged with it.
    public let nonce: [UInt8]
    private var buffer: [UInt8] = []
    private var expectedSequence: UInt64 = 1

    public init(authenticator: any FrameAuthenticator, nonce: [UInt8], maximumPayload: Int = 8 << 20) {
        precondition(nonce.count == Frame.nonceSize, "a connection nonce has 16 bytes")
        self.authenticator = authenticator
        self.nonce = nonce
        self.maximumPayload = maximumPayload
    }

    /// Bytes buffered and not yet framed.
    public var pendingBytes: Int { buffer.count }

    public mutating func append(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

    /// The next complete, authentic frame, or nil if more bytes are needed.
    public mutating func next() throws(FrameError) -> Frame? {
        guard buffer.count >= Frame.headerSize else {
            // Reject a wrong start as soon as it is visible, not after a full header.
            if !buffer.isEmpty && !Frame.magic.starts(with: buffer.prefix(2)) { throw .badMagic }
            return nil
        }
        guard buffer[0] == Frame.magic[0] && buffer[1] == Frame.magic[1] else { throw .badMagic }
        guard buffer[2] == Frame.version else { throw .unsupportedVersion(buffer[2]) }
        let type = buffer[3], keyId = buffer[4]
        guard Frame.isKnown(type) else { throw .unknownType(type) }
        guard authenticator.knows(keyId: keyId) else { throw .unknownKey(keyId) }
        guard buffer[5] == 0 && buffer[6] == 0 && buffer[7] == 0 else { throw .reservedBitsSet }
        let length = Int(buffer[24]) << 24 | Int(buffer[25]) << 16 | Int(buffer[26]) << 8 | Int(buffer[27])
        guard length <= maximumPayload else { throw .tooLarge(length) }
        let total = Frame.headerSize + length + Frame.tagSize
        guard buffer.count >= total else { return nil }

        let sequence = bigEndian(buffer[16..<24])
        guard sequence == expectedSequence else { throw .badSequence(expected: expectedSequence, got: sequence) }
        // The first frame (the peer's hello) cannot know our nonce yet: it is tagged with zeros.
        let receiverNonce = expectedSequence == 1 ? [UInt8](repeating: 0, count: Frame.nonceSize) : nonce
        let signed = receiverNonce + buffer[0..<(total - Frame.tagSize)]
        guard authenticator.verify(keyId: keyId, signed, tag: buffer[(total - Frame.tagSize)..<total]) else { throw .authenticationFailed }
        guard (expectedSequence == 1) == (type == Frame.helloType) else { throw .expectedHello }
        expectedSequence += 1
        let frame = Frame(
            type: type, sender: bigEndian(buffer[8..<16]), sequence: sequence, payload: Array(buffer[Frame.headerSize..<(total - Frame.tagSize)]))
        buffer.removeFirst(total)
        return frame
    }

    private func bigEndian(_ bytes: ArraySlice<UInt8>) -> UInt64 { bytes.reduce(0) { $0 << 8 | UInt64($1) } }
}

/// The payload of a hello: the sender's connection nonce, a fingerprint of its forget-key secret
/// (nodes that hash erased identifiers differently must not replicate: their erasures would not
/// find each other's data), and the address its peer listener answers on.
public struct Hello: Equatable, Sendable {
    public var nonce: [UInt8]
    public var forgetKeyFingerprint: [UInt8]
    public var address: String

    public init(nonce: [UInt8], forgetKeyFingerprint: [UInt8], address: String) {
        self.nonce = nonce
        self.forgetKeyFingerprint = forgetKeyFingerprint
        self.address = address
    }

    public var payload: [UInt8] { nonce + forgetKeyFingerprint + Array(address.utf8) }

    public init(payload: [UInt8]) throws(FrameError) {
        let fixed = Frame.nonceSize + 32
        guard payload.count >= fixed, payload.count <= fixed + 300,
            let address = String(validating: payload[fixed...], as: UTF8.self)
        else { throw .malformedHello }
        nonce = Array(payload[0..<Frame.nonceSize])
        forgetKeyFingerprint = Array(payload[Frame.nonceSize..<fixed])
        self.address = address
    }
}
