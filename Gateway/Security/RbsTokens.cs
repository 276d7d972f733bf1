// Dependency-free (BCL only) so the orchestrator can link this file as source:
//   <Compile Include="..\Gateway\Security\RbsTokens.cs" Link="Security\RbsTokens.cs" />
// and define RBS_ORCHESTRATOR so both copies can coexist in Rbs.Tests (InternalsVisibleTo from both).
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

#if RBS_ORCHESTRATOR
namespace Rbs.Orchestrator.Security;
#else
namespace Rbs.Gateway.Security;
#endif

/// <summary>What a token authorizes.</summary>
internal enum RbsTokenKind
{
    /// <summary>An agent may open tunnels to the gateway for <see cref="RbsTokenClaims.AgentId"/>.</summary>
    Join,

    /// <summary>A client (user) may open streams to <see cref="RbsTokenClaims.AgentId"/> through the gateway.</summary>
    Session,

    /// <summary>The orchestrator may query the gateway's internal API (agent registration state).</summary>
    Internal,
}

/// <summary>The validated content of a token.</summary>
internal sealed record RbsTokenClaims(RbsTokenKind Kind, string AgentId, string UserId, DateTimeOffset IssuedAt, DateTimeOffset ExpiresAt);

/// <summary>Outcome of <see cref="RbsTokenService.Validate"/>; <see cref="Claims"/> is set only on success.</summary>
internal sealed record RbsTokenValidation(RbsTokenClaims? Claims, string? Failure)
{
    public bool IsValid => Claims is not null;

    public static RbsTokenValidation Fail(string reason) => new(null, reason);
}

/// <summary>
/// Compact HMAC-SHA256 tokens: <c>base64url(json claims) "." base64url(HMAC(key, first part))</c>.
/// The orchestrator mints them (join tokens for agents, session tokens for clients); the gateway validates.
/// Both hold the same secret key (≥ 32 bytes), so no public-key infrastructure is needed.
/// </summary>
internal sealed class RbsTokenService
{
    /// <summary>Minimum key length: HMAC-SHA256's block of security.</summary>
    public const int MinimumKeyBytes = 32;

    private const int MaxTokenChars = 4096;
    private readonly byte[] _key;
    private readonly TimeProvider _timeProvider;

    public RbsTokenService(ReadOnlySpan<byte> key, TimeProvider timeProvider)
    {
        if (key.Length < MinimumKeyBytes)
        {
            throw new ArgumentException($"The token key must be at least {MinimumKeyBytes} bytes; it is {key.Length}.", nameof(key));
        }

        _key = key.ToArray();
        _timeProvider = timeProvider;
    }

    /// <summary>Decodes a base64 key (as stored in config or a secret file); throws a clear error otherwise.</summary>
    public static byte[] DecodeKey(string base64Key)
    {
        byte[] key;
        try
        {
            key = Convert.FromBase64String(base64Key.Trim());
        }
        catch (FormatException)
        {
            throw new FormatException("The token key is not valid base64 (generate one with: head -c 32 /dev/urandom | base64).");
        }

        if (key.Length < MinimumKeyBytes)
        {
            throw new FormatException($"The token key must decode to at least {MinimumKeyBytes} bytes; it has {key.Length}.");
        }

        return key;
    }

    /// <summary>Reads a base64 key from a file (a mounted secret).</summary>
    public static byte[] ReadKeyFile(string path) => DecodeKey(File.ReadAllText(path));

    /// <summary>Creates a random base64 key, e.g. for local mode.</summary>
    public static string GenerateKey() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(MinimumKeyBytes));

    public string Mint(RbsTokenKind kind, string agentId, string userId, TimeSpan lifetime)
    {
        ArgumentException.ThrowIfNullOrEmpty(agentId);
        ArgumentNullException.ThrowIfNull(userId);
        if (lifetime <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(lifetime), "A token lifetime must be positive.");
        }

        var now = _timeProvider.GetUtcNow();
        var payload = new TokenPayload
        {
            Version = 1,
            Kind = KindName(kind),
            AgentId = agentId,
            UserId = userId,
            IssuedAt = now.ToUnixTimeSeconds(),
            ExpiresAt = (now + lifetime).ToUnixTimeSeconds(),
            Nonce = Base64Url(RandomNumberGenerator.GetBytes(12)),
        };
        var body = Base64Url(JsonSerializer.SerializeToUtf8Bytes(payload, TokenJsonContext.Default.TokenPayload));
        return body + "." + Base64Url(Sign(body));
    }

    /// <summary>Checks signature (constant time), kind and expiry. Never throws for bad input.</summary>
    public RbsTokenValidation Validate(string? token, RbsTokenKind expectedKind)
    {
        if (string.IsNullOrEmpty(token))
        {
            return RbsTokenValidation.Fail("no token was presented");
        }

        if (token.Length > MaxTokenChars)
        {
            return RbsTokenValidation.Fail("the token is too long");
        }

        var dot = token.IndexOf('.', StringComparison.Ordinal);
        if (dot <= 0 || dot != token.LastIndexOf('.') || dot == token.Length - 1)
        {
            return RbsTokenValidation.Fail("the token is malformed");
        }

        var body = token[..dot];
        if (!TryFromBase64Url(token[(dot + 1)..], out var presentedSignature))
        {
            return RbsTokenValidation.Fail("the token is malformed");
        }

        if (!CryptographicOperations.FixedTimeEquals(Sign(body), presentedSignature))
        {
            return RbsTokenValidation.Fail("the token signature is invalid (forged, corrupted, or signed with another key)");
        }

        TokenPayload? payload;
        try
        {
            payload = TryFromBase64Url(body, out var json)
                ? JsonSerializer.Deserialize(json, TokenJsonContext.Default.TokenPayload)
                : null;
        }
        catch (JsonException)
        {
            payload = null;
        }

        if (payload is null || payload.Version != 1 || string.IsNullOrEmpty(payload.AgentId) || payload.UserId is null
            || !TryParseKind(payload.Kind, out var kind))
        {
            return RbsTokenValidation.Fail("the token is malformed");
        }

        if (kind != expectedKind)
        {
            return RbsTokenValidation.Fail($"a {KindName(kind)} token cannot be used where a {KindName(expectedKind)} token is required");
        }

        var expiresAt = DateTimeOffset.FromUnixTimeSeconds(payload.ExpiresAt);
        if (_timeProvider.GetUtcNow() >= expiresAt)
        {
            return RbsTokenValidation.Fail($"the token expired at {expiresAt:O}");
        }

        return new RbsTokenValidation(
            new RbsTokenClaims(kind, payload.AgentId, payload.UserId, DateTimeOffset.FromUnixTimeSeconds(payload.IssuedAt), expiresAt),
            null);
    }

    /// <summary>Constant-time string equality for identities and secrets.</summary>
    public static bool FixedTimeEquals(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b));

    private byte[] Sign(string body) => HMACSHA256.HashData(_key, Encoding.ASCII.GetBytes(body));

    private static string KindName(RbsTokenKind kind) => kind switch
    {
        RbsTokenKind.Join => "join",
        RbsTokenKind.Session => "session",
        _ => "internal",
    };

    private static bool TryParseKind(string? name, out RbsTokenKind kind)
    {
        switch (name)
        {
            case "join":
                kind = RbsTokenKind.Join;
                return true;
            case "session":
                kind = RbsTokenKind.Session;
                return true;
            case "internal":
                kind = RbsTokenKind.Internal;
                return true;
            default:
                kind = default;
                return false;
        }
    }

    private static string Base64Url(ReadOnlySpan<byte> bytes) =>
        Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    private static bool TryFromBase64Url(string text, out byte[] bytes)
    {
        var s = text.Replace('-', '+').Replace('_', '/');
        s = (s.Length % 4) switch
        {
            2 => s + "==",
            3 => s + "=",
            _ => s,
        };
        bytes = new byte[s.Length];
        if (s.Length % 4 != 0 || !Convert.TryFromBase64String(s, bytes, out var written))
        {
            bytes = [];
            return false;
        }

        bytes = bytes[..written];
        return true;
    }
}

internal sealed class TokenPayload
{
    [JsonPropertyName("v")]
    public int Version { get; set; }

    [JsonPropertyName("kind")]
    public string? Kind { get; set; }

    [JsonPropertyName("agent")]
    public string? AgentId { get; set; }

    [JsonPropertyName("user")]
    public string? UserId { get; set; }

    [JsonPropertyName("iat")]
    public long IssuedAt { get; set; }

    [JsonPropertyName("exp")]
    public long ExpiresAt { get; set; }

    [JsonPropertyName("n")]
    public string? Nonce { get; set; }
}

[JsonSerializable(typeof(TokenPayload))]
internal sealed partial class TokenJsonContext : JsonSerializerContext;
