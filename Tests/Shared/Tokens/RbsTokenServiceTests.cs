using System.Text;
using Microsoft.Extensions.Time.Testing;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;
using Rbs.Shared.Tokens;

namespace Rbs.Tests.Shared.Tokens;

public sealed class RbsTokenServiceTests
{
    private static readonly byte[] s_key = Convert.FromBase64String(RbsTokenKeyRing.GenerateKey());
    private static readonly DateTimeOffset s_start = new(2026, 11, 27, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task SessionTokenIsAJwtThatRoundTripsItsClaims()
    {
        var time = new FakeTimeProvider(s_start);
        var service = new RbsTokenService(s_key, time);

        var token = service.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        var result = await service.ValidateAsync(token, RbsTokenKind.Session);

        Assert.True(result.IsValid, result.Failure);
        Assert.Equal(RbsTokenKind.Session, result.Claims!.Kind);
        Assert.Equal("agent-1", result.Claims.AgentId);
        Assert.Equal("alice", result.Claims.UserId);
        Assert.Equal(s_start.AddMinutes(5), result.Claims.ExpiresAt);
        var jwt = new JsonWebToken(token);
        Assert.Equal("HS256", jwt.Alg);
        Assert.Equal(new RbsTokenKey(s_key).Id, jwt.Kid);
        Assert.Equal(RbsTokenService.Issuer, jwt.Issuer);
        Assert.Equal(["rbs-session"], jwt.Audiences);
        Assert.Null(CanonicalForm.Problem(token));
    }

    [Fact]
    public async Task OnlyAnAuthenticTokenWhoseOneFaultIsExpiryCarriesItsExpiredClaims()
    {
        var time = new FakeTimeProvider(s_start);
        var service = new RbsTokenService(s_key, time);
        var token = service.Mint(RbsTokenKind.Join, "agent-1", "alice", TimeSpan.FromMinutes(5));
        Assert.Null((await service.ValidateAsync(token, RbsTokenKind.Join)).ExpiredClaims);

        time.Advance(TimeSpan.FromHours(3));
        var expired = await service.ValidateAsync(token, RbsTokenKind.Join);
        Assert.False(expired.IsValid);
        Assert.Null(expired.Claims);
        Assert.Equal("agent-1", expired.ExpiredClaims!.AgentId);
        Assert.Equal("alice", expired.ExpiredClaims.UserId);

        // Another kind, another key, a tampered payload: nothing, expired or not.
        Assert.Null((await service.ValidateAsync(token, RbsTokenKind.Session)).ExpiredClaims);
        var otherKey = new RbsTokenService(Convert.FromBase64String(RbsTokenKeyRing.GenerateKey()), time);
        Assert.Null((await otherKey.ValidateAsync(token, RbsTokenKind.Join)).ExpiredClaims);
        Assert.Null((await service.ValidateAsync(TamperPayload(token, "agent-1", "agent-2"), RbsTokenKind.Join)).ExpiredClaims);
    }

    [Fact]
    public async Task TokenExpiresAtItsLifetimePlusTheClockSkewAllowance()
    {
        var time = new FakeTimeProvider(s_start);
        var service = new RbsTokenService(RbsTokenKeyRing.Single(s_key), time, TimeSpan.FromSeconds(30));
        var token = service.Mint(RbsTokenKind.Join, "agent-1", "alice", TimeSpan.FromMinutes(5));

        // A validating host whose clock runs up to 30 s ahead of the minter's still accepts it.
        time.Advance(TimeSpan.FromMinutes(5) + TimeSpan.FromSeconds(29));
        Assert.True((await service.ValidateAsync(token, RbsTokenKind.Join)).IsValid);

        time.Advance(TimeSpan.FromSeconds(1));
        var expired = await service.ValidateAsync(token, RbsTokenKind.Join);
        Assert.False(expired.IsValid);
        Assert.Contains("expired", expired.Failure, StringComparison.Ordinal);

        // No allowance: refused the second it expires.
        var strict = new RbsTokenService(RbsTokenKeyRing.Single(s_key), new FakeTimeProvider(s_start.AddMinutes(5)), TimeSpan.Zero);
        Assert.False((await strict.ValidateAsync(token, RbsTokenKind.Join)).IsValid);
    }

    [Fact]
    public async Task TokenFromAHostWhoseClockIsAheadIsAcceptedWithinTheSkewOnly()
    {
        var token = new RbsTokenService(s_key, new FakeTimeProvider(s_start.AddSeconds(20))).Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        Assert.True((await new RbsTokenService(s_key, new FakeTimeProvider(s_start)).ValidateAsync(token, RbsTokenKind.Session)).IsValid);

        var early = new RbsTokenService(s_key, new FakeTimeProvider(s_start.AddMinutes(2))).Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        var result = await new RbsTokenService(s_key, new FakeTimeProvider(s_start)).ValidateAsync(early, RbsTokenKind.Session);
        Assert.False(result.IsValid);
        Assert.Contains("not valid before", result.Failure, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TamperedPayloadOrSignatureIsRejected()
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        var token = service.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));

        var forged = await service.ValidateAsync(TamperPayload(token, "agent-1", "agent-2"), RbsTokenKind.Session);
        Assert.False(forged.IsValid);
        Assert.Contains("signature", forged.Failure, StringComparison.Ordinal);

        var parts = token.Split('.');
        var signature = Base64UrlEncoder.DecodeBytes(parts[2]);
        signature[0] ^= 1;
        Assert.False((await service.ValidateAsync($"{parts[0]}.{parts[1]}.{Base64UrlEncoder.Encode(signature)}", RbsTokenKind.Session)).IsValid);
    }

    [Fact]
    public async Task AJoinTokenNeverPassesForASessionTokenNorTheOtherWayRound()
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        foreach (var (minted, expected) in new[] { (RbsTokenKind.Join, RbsTokenKind.Session), (RbsTokenKind.Session, RbsTokenKind.Join), (RbsTokenKind.Session, RbsTokenKind.Internal), (RbsTokenKind.Internal, RbsTokenKind.Join) })
        {
            var result = await service.ValidateAsync(service.Mint(minted, "agent-1", "alice", TimeSpan.FromMinutes(5)), expected);
            Assert.False(result.IsValid);
            Assert.Null(result.ExpiredClaims);
            Assert.Contains($"a {RbsTokenService.Name(minted)} token cannot be used", result.Failure, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task TokenSignedWithAnotherKeyIsRejected()
    {
        var mine = new RbsTokenService(s_key, TimeProvider.System);
        var theirs = new RbsTokenService(Convert.FromBase64String(RbsTokenKeyRing.GenerateKey()), TimeProvider.System);

        var result = await mine.ValidateAsync(theirs.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5)), RbsTokenKind.Session);

        Assert.False(result.IsValid);
        Assert.Contains("signature", result.Failure, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ARotationKeepsOldTokensValidWhileTheirKeyIsListedAndRefusesThemOnceItIsRemoved()
    {
        var oldKey = Convert.FromBase64String(RbsTokenKeyRing.GenerateKey());
        var newKey = Convert.FromBase64String(RbsTokenKeyRing.GenerateKey());
        var before = new RbsTokenService(RbsTokenKeyRing.Single(oldKey), TimeProvider.System);
        var oldToken = before.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));

        // Step 1: the new key is accepted everywhere, the old one still signs.
        var step1 = new RbsTokenService(new RbsTokenKeyRing(new RbsTokenKey(oldKey), [new RbsTokenKey(newKey)]), TimeProvider.System);
        // Step 2: the new key signs, the old one is still accepted.
        var step2 = new RbsTokenService(new RbsTokenKeyRing(new RbsTokenKey(newKey), [new RbsTokenKey(oldKey)]), TimeProvider.System);
        var newToken = step2.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        Assert.Equal(new RbsTokenKey(newKey).Id, new JsonWebToken(newToken).Kid);
        foreach (var host in new[] { step1, step2 })
        {
            Assert.True((await host.ValidateAsync(oldToken, RbsTokenKind.Session)).IsValid);
            Assert.True((await host.ValidateAsync(newToken, RbsTokenKind.Session)).IsValid);
        }

        // Step 3: the old key is gone: its tokens are refused, the new ones are not.
        var step3 = new RbsTokenService(RbsTokenKeyRing.Single(newKey), TimeProvider.System);
        var refused = await step3.ValidateAsync(oldToken, RbsTokenKind.Session);
        Assert.False(refused.IsValid);
        Assert.Contains("signature", refused.Failure, StringComparison.Ordinal);
        Assert.True((await step3.ValidateAsync(newToken, RbsTokenKind.Session)).IsValid);
        // An old-key token relabelled with the new kid is still refused.
        Assert.False((await step3.ValidateAsync(WithHeader(oldToken, h => h.Replace(new RbsTokenKey(oldKey).Id, new RbsTokenKey(newKey).Id, StringComparison.Ordinal)), RbsTokenKind.Session)).IsValid);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("no-dot")]
    [InlineData(".")]
    [InlineData("..")]
    [InlineData("a.b.c")]
    [InlineData("e30.!!!")]
    public async Task MalformedTokensAreRejectedWithoutThrowing(string? token)
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        Assert.False((await service.ValidateAsync(token, RbsTokenKind.Session)).IsValid);
    }

    public static TheoryData<string, Func<string, string>> NonCanonicalSpellings => new()
    {
        { "padding on the signature", t => t + "=" },
        { "padding on the payload", t => Part(t, 1, p => p + "==") },
        { "a standard base64 character (+)", t => Part(t, 2, p => "+" + p[1..]) },
        { "a standard base64 character (/)", t => Part(t, 1, p => "/" + p[1..]) },
        { "a character outside base64url", t => Part(t, 2, p => p[..^1] + "*") },
        { "a doubled dot", t => t.Replace(".", "..", StringComparison.Ordinal) },
        { "a leading dot", t => "." + t },
        { "a trailing dot", t => t + "." },
        { "a fourth part", t => t + ".AAAA" },
        { "whitespace", t => Part(t, 1, p => p[..4] + " " + p[4..]) },
        { "nonzero unused bits in the signature's last character", t => Part(t, 2, p => p[..^1] + (char)(p[^1] + 1)) },
    };

    [Theory]
    [MemberData(nameof(NonCanonicalSpellings))]
    public async Task NonCanonicalSpellingsOfAValidTokenAreRejected(string what, Func<string, string> respell)
    {
        var service = new RbsTokenService(s_key, TimeProvider.System);
        var token = service.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));
        Assert.True((await service.ValidateAsync(token, RbsTokenKind.Session)).IsValid);

        var result = await service.ValidateAsync(respell(token), RbsTokenKind.Session);

        Assert.False(result.IsValid, what);
        Assert.Contains("malformed", result.Failure, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AlgNoneAndAlgorithmsOtherThanHs256AreRejected()
    {
        // 64 bytes: long enough for HS512 too.
        var key = System.Security.Cryptography.RandomNumberGenerator.GetBytes(64);
        var service = new RbsTokenService(key, TimeProvider.System);
        var token = service.Mint(RbsTokenKind.Session, "agent-1", "alice", TimeSpan.FromMinutes(5));

        // alg=none with the signature dropped (an empty third part), and with the original signature kept.
        var none = WithHeader(token, h => h.Replace("HS256", "none", StringComparison.Ordinal));
        Assert.False((await service.ValidateAsync(none[..(none.LastIndexOf('.') + 1)], RbsTokenKind.Session)).IsValid);
        Assert.False((await service.ValidateAsync(none, RbsTokenKind.Session)).IsValid);

        // The same key and claims, signed with HS512: authentic, but not the configured algorithm.
        var hs512 = new JsonWebTokenHandler { SetDefaultTimesOnTokenCreation = false }.CreateToken(new SecurityTokenDescriptor
        {
            Issuer = RbsTokenService.Issuer,
            Audience = RbsTokenService.Audience(RbsTokenKind.Session),
            IssuedAt = DateTime.UtcNow,
            NotBefore = DateTime.UtcNow,
            Expires = DateTime.UtcNow.AddMinutes(5),
            Claims = new Dictionary<string, object> { [RbsTokenService.AgentClaim] = "agent-1", [RbsTokenService.UserClaim] = "alice" },
            SigningCredentials = new SigningCredentials(new RbsTokenKey(key).SecurityKey, SecurityAlgorithms.HmacSha512),
        });
        Assert.Equal("HS512", new JsonWebToken(hs512).Alg);
        // (IdentityModel reports the algorithm check among the signature checks.)
        Assert.False((await service.ValidateAsync(hs512, RbsTokenKind.Session)).IsValid);
    }

    [Fact]
    public void KeysAreCheckedAndListsParsed()
    {
        Assert.Throws<ArgumentException>(() => new RbsTokenKey(new byte[16]));
        Assert.Throws<FormatException>(() => RbsTokenKeyRing.DecodeKey("not base64!"));
        Assert.Throws<FormatException>(() => RbsTokenKeyRing.DecodeKey(Convert.ToBase64String(new byte[8])));
        Assert.Equal(32, RbsTokenKeyRing.DecodeKey(RbsTokenKeyRing.GenerateKey() + "\n").Length);

        var (a, b) = (RbsTokenKeyRing.GenerateKey(), RbsTokenKeyRing.GenerateKey());
        Assert.Equal(2, RbsTokenKeyRing.DecodeKeyList($"# rotation of 2026-12\n{a}\n\n{b}, {a}\n").Distinct(new BytesComparer()).Count());
        var ring = RbsTokenKeyRing.Load(a, null, $"{b},{a}", null);
        Assert.Equal(new RbsTokenKey(Convert.FromBase64String(a)).Id, ring.Current.Id);
        Assert.Equal(2, ring.Accepted.Count);
        // The key id is derived from the key: the same key, the same id, on every host.
        Assert.Equal(new RbsTokenKey(Convert.FromBase64String(b)).Id, ring.Accepted[1].Id);
        Assert.NotEqual(ring.Accepted[0].Id, ring.Accepted[1].Id);
    }

    private static string Part(string token, int index, Func<string, string> change)
    {
        var parts = token.Split('.');
        parts[index] = change(parts[index]);
        return string.Join('.', parts);
    }

    private static string TamperPayload(string token, string from, string to) =>
        Part(token, 1, p => Base64UrlEncoder.Encode(Encoding.UTF8.GetString(Base64UrlEncoder.DecodeBytes(p)).Replace(from, to, StringComparison.Ordinal)));

    private static string WithHeader(string token, Func<string, string> change) =>
        Part(token, 0, p => Base64UrlEncoder.Encode(change(Encoding.UTF8.GetString(Base64UrlEncoder.DecodeBytes(p)))));

    private sealed class BytesComparer : IEqualityComparer<byte[]>
    {
        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);

        public int GetHashCode(byte[] obj) => obj.Length == 0 ? 0 : obj[0];
    }
}
