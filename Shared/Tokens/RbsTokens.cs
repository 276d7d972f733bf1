using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;

namespace Rbs.Shared.Tokens;

/// <summary>What a token authorizes; each kind has its own audience, so one kind never passes for another.</summary>
internal enum RbsTokenKind
{
    /// <summary>An agent may open tunnels to the gateway for <see cref="RbsTokenClaims.AgentId"/>.</summary>
    Join,

    /// <summary>A client (user) may open streams to <see cref="RbsTokenClaims.AgentId"/> through the gateway.</summary>
    Session,

    /// <summary>The orchestrator and the gateway may call each other's internal APIs.</summary>
    Internal,
}

/// <summary>The validated content of a token.</summary>
internal sealed record RbsTokenClaims(RbsTokenKind Kind, string AgentId, string UserId, DateTimeOffset IssuedAt, DateTimeOffset ExpiresAt);

/// <summary>Outcome of <see cref="RbsTokenService.ValidateAsync"/>; <see cref="Claims"/> is set only on success.</summary>
/// <param name="ExpiredClaims">
/// Set only when the token is authentic (signature, kind and shape valid) and its one fault is that it expired: a
/// caller may then accept it after checking elsewhere that its subject is still entitled (the gateway asks the
/// orchestrator before it re-admits a live agent whose join token lapsed). Never a credential on its own.
/// </param>
internal sealed record RbsTokenValidation(RbsTokenClaims? Claims, string? Failure, RbsTokenClaims? ExpiredClaims = null)
{
    public bool IsValid => Claims is not null;

    public static RbsTokenValidation Fail(string reason) => new(null, reason);
}

/// <summary>
/// JWTs (RFC 7519, compact JWS, HS256) for join, session and internal tokens: the orchestrator mints join and session
/// tokens, the gateway validates them (and renews join tokens); both mint and validate internal ones. Both hold the same
/// keys (<see cref="RbsTokenKeyRing"/>), so no public-key infrastructure is needed. Claims: <c>iss</c> <see cref="Issuer"/>,
/// <c>aud</c> one per kind (<see cref="Audience"/>), <c>agent</c>, <c>user</c>, <c>iat</c>/<c>nbf</c>/<c>exp</c>, a
/// random <c>jti</c>; header <c>kid</c> names the signing key. The signature check is IdentityModel's (constant time).
/// </summary>
internal sealed class RbsTokenService
{
    public const string Issuer = "rbs";
    public const string AgentClaim = "agent";
    public const string UserClaim = "user";

    /// <summary>Tolerated clock difference between hosts for <c>nbf</c>/<c>exp</c>.</summary>
    public static readonly TimeSpan DefaultClockSkew = TimeSpan.FromSeconds(30);

    private readonly RbsTokenKeyRing _keys;
    private readonly TimeProvider _timeProvider;
    private readonly TimeSpan _clockSkew;

    public RbsTokenService(RbsTokenKeyRing keys, TimeProvider timeProvider, TimeSpan? clockSkew = null)
    {
        if (clockSkew < TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(clockSkew), "The clock skew allowance cannot be negative.");
        }

        _keys = keys;
        _timeProvider = timeProvider;
        _clockSkew = clockSkew ?? DefaultClockSkew;
    }

    /// <summary>One key (local mode, tests).</summary>
    public RbsTokenService(ReadOnlySpan<byte> key, TimeProvider timeProvider)
        : this(RbsTokenKeyRing.Single(key), timeProvider)
    {
    }

    /// <summary>The handler that validates (JwtBearer's too): IdentityModel's, behind the canonical-form check.</summary>
    public JsonWebTokenHandler Handler { get; } = new CanonicalJsonWebTokenHandler { SetDefaultTimesOnTokenCreation = false, MapInboundClaims = false };

    public static string Audience(RbsTokenKind kind) => kind switch
    {
        RbsTokenKind.Join => "rbs-join",
        RbsTokenKind.Session => "rbs-session",
        _ => "rbs-internal",
    };

    public string Mint(RbsTokenKind kind, string agentId, string userId, TimeSpan lifetime)
    {
        ArgumentException.ThrowIfNullOrEmpty(agentId);
        ArgumentNullException.ThrowIfNull(userId);
        if (lifetime <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(lifetime), "A token lifetime must be positive.");
        }

        var now = _timeProvider.GetUtcNow().UtcDateTime;
        return Handler.CreateToken(new SecurityTokenDescriptor
        {
            Issuer = Issuer,
            Audience = Audience(kind),
            IssuedAt = now,
            NotBefore = now,
            Expires = now + lifetime,
            SigningCredentials = _keys.Current.SigningCredentials,
            Claims = new Dictionary<string, object>
            {
                [AgentClaim] = agentId,
                [UserClaim] = userId,
                [JwtRegisteredClaimNames.Jti] = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12)),
            },
        });
    }

    /// <summary>What a valid token of one of <paramref name="kinds"/> must satisfy (JwtBearer on the gateway uses it too).</summary>
    public TokenValidationParameters ValidationParameters(params RbsTokenKind[] kinds) => new()
    {
        ValidIssuer = Issuer,
        ValidAudiences = kinds.Select(Audience).ToArray(),
        RequireAudience = true,
        IssuerSigningKeys = _keys.ValidationKeys,
        // The kid must name an accepted key: a key removed from the ring is not tried under another name.
        TryAllIssuerSigningKeys = false,
        ValidAlgorithms = [SecurityAlgorithms.HmacSha256],
        ValidTypes = [JwtConstants.HeaderType],
        RequireSignedTokens = true,
        RequireExpirationTime = true,
        ValidateLifetime = true,
        ClockSkew = _clockSkew,
        // IdentityModel reads the system clock; this host's TimeProvider decides (tests move it).
        LifetimeValidator = ValidateLifetime,
        NameClaimType = UserClaim,
    };

    /// <summary>Checks form, signature (constant time), issuer, kind and lifetime. Never throws for bad input.</summary>
    public async Task<RbsTokenValidation> ValidateAsync(string? token, RbsTokenKind expectedKind)
    {
        if (string.IsNullOrEmpty(token))
        {
            return RbsTokenValidation.Fail("no token was presented");
        }

        var parameters = ValidationParameters(expectedKind);
        var result = await Handler.ValidateTokenAsync(token, parameters);
        if (result.IsValid)
        {
            return ClaimsOf(result.ClaimsIdentity, expectedKind) is { } claims
                ? new RbsTokenValidation(claims, null)
                : RbsTokenValidation.Fail("the token is malformed (no agent or user claim)");
        }

        var failure = result.Exception is SecurityTokenInvalidAudienceException && KindOfAudiences(token) is { } presented
            ? WrongKind(presented, expectedKind)
            : Describe(result.Exception);
        if (result.Exception is SecurityTokenExpiredException)
        {
            parameters.ValidateLifetime = false;
            var authentic = await Handler.ValidateTokenAsync(token, parameters);
            return new RbsTokenValidation(null, failure, authentic.IsValid ? ClaimsOf(authentic.ClaimsIdentity, expectedKind) : null);
        }

        return RbsTokenValidation.Fail(failure);
    }

    private bool ValidateLifetime(DateTime? notBefore, DateTime? expires, SecurityToken token, TokenValidationParameters parameters)
    {
        if (!parameters.ValidateLifetime)
        {
            return true;
        }

        if (expires is not { } exp)
        {
            throw new SecurityTokenNoExpirationException("the token has no expiry");
        }

        var now = _timeProvider.GetUtcNow().UtcDateTime;
        if (notBefore is { } nbf && now + parameters.ClockSkew < nbf)
        {
            throw new SecurityTokenNotYetValidException("the token is not valid yet") { NotBefore = nbf };
        }

        if (now - parameters.ClockSkew >= exp)
        {
            throw new SecurityTokenExpiredException("the token expired") { Expires = exp };
        }

        return true;
    }

    /// <summary>The claims of a validated token; null when it lacks the agent or user claim.</summary>
    public static RbsTokenClaims? ClaimsOf(ClaimsIdentity? identity, RbsTokenKind kind)
    {
        var agent = identity?.FindFirst(AgentClaim)?.Value;
        var user = identity?.FindFirst(UserClaim)?.Value;
        if (string.IsNullOrEmpty(agent) || user is null)
        {
            return null;
        }

        return new RbsTokenClaims(kind, agent, user, Seconds(identity!, JwtRegisteredClaimNames.Iat), Seconds(identity!, JwtRegisteredClaimNames.Exp));
    }

    /// <summary>The kind a validated identity's audience names; null for none of ours.</summary>
    public static RbsTokenKind? KindOf(ClaimsIdentity? identity)
    {
        foreach (var kind in Enum.GetValues<RbsTokenKind>())
        {
            if (identity?.HasClaim(JwtRegisteredClaimNames.Aud, Audience(kind)) == true)
            {
                return kind;
            }
        }

        return null;
    }

    /// <summary>Why a token was refused, for the refusal and the log; never echoes the token.</summary>
    public static string Describe(Exception? exception) => exception switch
    {
        null => "no token was presented",
        SecurityTokenExpiredException e => $"the token expired at {new DateTimeOffset(e.Expires, TimeSpan.Zero):O}",
        SecurityTokenNotYetValidException e => $"the token is not valid before {new DateTimeOffset(e.NotBefore, TimeSpan.Zero):O}",
        SecurityTokenSignatureKeyNotFoundException or SecurityTokenInvalidSignatureException =>
            "the token signature is invalid (forged, corrupted, or signed with a key this host does not accept)",
        SecurityTokenInvalidAudienceException => "the token is not for this use (another audience)",
        SecurityTokenInvalidAlgorithmException => $"the token is not signed with {SecurityAlgorithms.HmacSha256}",
        SecurityTokenInvalidIssuerException => $"the token was not issued by {Issuer}",
        SecurityTokenMalformedException e when e.Message.StartsWith(CanonicalForm.Prefix, StringComparison.Ordinal) => e.Message,
        _ => "the token is malformed",
    };

    /// <summary>Refusal for a valid token of the wrong kind.</summary>
    public static string WrongKind(RbsTokenKind presented, RbsTokenKind expected) =>
        $"a {Name(presented)} token cannot be used where a {Name(expected)} token is required";

    /// <summary>Constant-time string equality for identities and secrets.</summary>
    public static bool FixedTimeEquals(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b));

    public static string Name(RbsTokenKind kind) => kind switch
    {
        RbsTokenKind.Join => "join",
        RbsTokenKind.Session => "session",
        _ => "internal",
    };

    /// <summary>The kind named by the audience of a token that passed every check but the audience.</summary>
    private static RbsTokenKind? KindOfAudiences(string token)
    {
        var audiences = new JsonWebToken(token).Audiences.ToArray();
        return audiences.Length == 1 && Enum.GetValues<RbsTokenKind>().FirstOrDefault(k => Audience(k) == audiences[0]) is var kind && Audience(kind) == audiences[0]
            ? kind
            : null;
    }

    private static DateTimeOffset Seconds(ClaimsIdentity identity, string claim) =>
        long.TryParse(identity.FindFirst(claim)?.Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var seconds)
            ? DateTimeOffset.FromUnixTimeSeconds(seconds)
            : DateTimeOffset.MinValue;

    /// <summary>IdentityModel's handler, refusing any token that is not in canonical compact form before it parses it.</summary>
    private sealed class CanonicalJsonWebTokenHandler : JsonWebTokenHandler
    {
        public override Task<TokenValidationResult> ValidateTokenAsync(string token, TokenValidationParameters validationParameters) =>
            CanonicalForm.Problem(token) is { } problem
                ? Task.FromResult(new TokenValidationResult { IsValid = false, Exception = new SecurityTokenMalformedException(problem) })
                : base.ValidateTokenAsync(token, validationParameters);
    }
}

/// <summary>
/// The one spelling of a token accepted: three non-empty base64url parts (RFC 7515 §2: no padding, only
/// <c>A-Z a-z 0-9 - _</c>, unused trailing bits zero) joined by single dots. Decoders are lenient about each of these,
/// so without this check one token would have many spellings (e.g. another last character of the signature).
/// </summary>
internal static class CanonicalForm
{
    public const string Prefix = "the token is malformed";
    public const int MaxTokenChars = 4096;

    /// <summary>Null when canonical; else why not.</summary>
    public static string? Problem(string? token)
    {
        if (string.IsNullOrEmpty(token))
        {
            return $"{Prefix} (empty)";
        }

        if (token.Length > MaxTokenChars)
        {
            return $"{Prefix} (longer than {MaxTokenChars} characters)";
        }

        var rest = token.AsSpan();
        for (var part = 0; part < 3; part++)
        {
            var dot = rest.IndexOf('.');
            var segment = part < 2 ? (dot < 0 ? [] : rest[..dot]) : rest;
            if ((part < 2 && dot < 0) || (part == 2 && dot >= 0) || segment.IsEmpty)
            {
                return $"{Prefix} (a JWT is three non-empty parts joined by single dots)";
            }

            if (!IsCanonicalBase64Url(segment))
            {
                return $"{Prefix} (not canonical base64url: no padding, only A-Z a-z 0-9 - _)";
            }

            rest = part < 2 ? rest[(dot + 1)..] : [];
        }

        return null;
    }

    private static bool IsCanonicalBase64Url(ReadOnlySpan<char> text)
    {
        if (text.Length % 4 == 1)
        {
            return false;
        }

        var last = 0;
        foreach (var c in text)
        {
            last = c switch
            {
                >= 'A' and <= 'Z' => c - 'A',
                >= 'a' and <= 'z' => c - 'a' + 26,
                >= '0' and <= '9' => c - '0' + 52,
                '-' => 62,
                '_' => 63,
                _ => -1,
            };
            if (last < 0)
            {
                return false;
            }
        }

        // The last character of a partial group carries bits past the data: a canonical encoder leaves them zero.
        return (text.Length % 4) switch
        {
            2 => (last & 0x0F) == 0,
            3 => (last & 0x03) == 0,
            _ => true,
        };
    }
}
