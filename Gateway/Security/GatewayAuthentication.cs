using Grpc.Core;
using Microsoft.AspNetCore.Authentication.JwtBearer;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Authorization.Policy;
using Microsoft.Extensions.Options;
using Microsoft.IdentityModel.Tokens;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Registration;
using Rbs.Gateway.Tunnel;
using Rbs.Shared.Protocol;
using Rbs.Shared.Text;
using Rbs.Shared.Tokens;

namespace Rbs.Gateway.Security;

/// <summary>
/// The gateway's token checks: ASP.NET Core's JwtBearer handler authenticates (IdentityModel's JsonWebTokenHandler behind
/// the canonical-form check, the keys of <see cref="RbsTokenKeyRing"/>), and one authorization policy per kind decides:
/// <see cref="Join"/> on the tunnel endpoint, <see cref="Session"/> on every client stream (also: the route names the
/// token's agent), <see cref="Internal"/> on the orchestrator's <c>rbs.v1.GatewayRegistry</c>. Refusals keep their wire form (plain
/// 401/503 for agents, gRPC statuses for clients and the orchestrator): <see cref="RefusalWriter"/>.
/// </summary>
internal static class GatewayAuthentication
{
    public const string Scheme = "rbs";
    public const string Join = "join";
    public const string Session = "session";
    public const string Internal = "internal";

    public static IServiceCollection AddGatewayAuthentication(this IServiceCollection services)
    {
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
            return new RbsTokenService(o.ReadTokenKeys(), sp.GetRequiredService<TimeProvider>(), o.TokenClockSkew);
        });

        services.AddAuthentication().AddJwtBearer(Scheme);
        services.AddOptions<JwtBearerOptions>(Scheme).Configure<RbsTokenService>((o, tokens) =>
        {
            o.MapInboundClaims = false;
            o.TokenHandlers.Clear();
            o.TokenHandlers.Add(tokens.Handler);
            o.TokenValidationParameters = tokens.ValidationParameters(RbsTokenKind.Join, RbsTokenKind.Session, RbsTokenKind.Internal);
            o.Events = new JwtBearerEvents { OnMessageReceived = OnlyWithAPolicy, OnAuthenticationFailed = RememberFailureAsync };
        });

        services.AddAuthorizationBuilder()
            .AddPolicy(Join, Policy(RbsTokenKind.Join))
            .AddPolicy(Session, Policy(RbsTokenKind.Session))
            .AddPolicy(Internal, Policy(RbsTokenKind.Internal));
        services.AddSingleton<IAuthorizationHandler, RbsTokenAuthorizationHandler>();
        services.AddSingleton<IAuthorizationMiddlewareResultHandler, RefusalWriter>();
        // Every refusal is logged once, by RefusalWriter (EventIds 120, 130, 134), with the reason; the platform's own
        // per-request lines (with a stack trace per refused token) would repeat it on every stream.
        services.Configure<LoggerFilterOptions>(o =>
        {
            o.AddFilter("Microsoft.AspNetCore.Authentication", LogLevel.Warning);
            o.AddFilter("Microsoft.AspNetCore.Authorization", LogLevel.Warning);
        });
        return services;
    }

    /// <summary>The claims the policy admitted this request with (the endpoints' identity).</summary>
    public static RbsTokenClaims Claims(HttpContext context) =>
        context.Features.Get<RbsTokenFeature>()?.Admitted ?? throw new InvalidOperationException("no token was admitted for this request");

    private static AuthorizationPolicy Policy(RbsTokenKind kind) =>
        new AuthorizationPolicyBuilder(Scheme).AddRequirements(new RbsTokenRequirement(kind)).Build();

    /// <summary>
    /// The one scheme is the default, so ASP.NET Core authenticates every request with it; only the endpoints with a
    /// policy here read a token (a proxied GetServer carries the client's API key, not a token of ours).
    /// </summary>
    private static Task OnlyWithAPolicy(MessageReceivedContext context)
    {
        if (context.HttpContext.GetEndpoint()?.Metadata.GetMetadata<IAuthorizeData>() is null)
        {
            context.NoResult();
        }

        return Task.CompletedTask;
    }

    /// <summary>
    /// Keeps why authentication failed for the refusal, and, for an authentic join token whose one fault is its age,
    /// its claims: the join policy may still admit it once the orchestrator confirms the agent.
    /// </summary>
    private static async Task RememberFailureAsync(AuthenticationFailedContext context)
    {
        var feature = RbsTokenFeature.Of(context.HttpContext);
        feature.Failure = RbsTokenService.Describe(context.Exception);
        if (context.Exception is SecurityTokenExpiredException
            && TunnelEndpoints.BearerToken(context.Request.Headers.Authorization) is { } token)
        {
            var tokens = context.HttpContext.RequestServices.GetRequiredService<RbsTokenService>();
            feature.ExpiredJoin = (await tokens.ValidateAsync(token, RbsTokenKind.Join)).ExpiredClaims;
        }
    }
}

/// <summary>Per request: what authentication and the policy found.</summary>
internal sealed class RbsTokenFeature
{
    public string? Failure { get; set; }

    public RbsTokenClaims? ExpiredJoin { get; set; }

    public RbsTokenClaims? Admitted { get; set; }

    public RbsTokenRefusal? Refusal { get; set; }

    public static RbsTokenFeature Of(HttpContext context)
    {
        if (context.Features.Get<RbsTokenFeature>() is not { } feature)
        {
            feature = new RbsTokenFeature();
            context.Features.Set(feature);
        }

        return feature;
    }
}

internal sealed record RbsTokenRequirement(RbsTokenKind Kind) : IAuthorizationRequirement;

/// <summary>How a refusal is answered.</summary>
internal enum RefusalKind
{
    /// <summary>No valid token of the kind: 401 / Unauthenticated.</summary>
    Unauthenticated,

    /// <summary>A valid token that does not grant this: PermissionDenied.</summary>
    Forbidden,

    /// <summary>The stream names no agent: InvalidArgument.</summary>
    MissingRoute,

    /// <summary>Nothing is known yet (the orchestrator did not answer): 503, retry.</summary>
    Retry,
}

internal sealed class RbsTokenRefusal(IAuthorizationHandler handler, RefusalKind kind, string message) : AuthorizationFailureReason(handler, message)
{
    public RefusalKind Kind { get; } = kind;
}

/// <summary>
/// The policies' one requirement: a valid token of the kind. A session stream must also name the token's agent in its
/// route (compared in constant time); an authentic join token that merely expired (a gateway restart, or an outage
/// longer than its lifetime, while the agent lived on) is admitted only when the orchestrator confirms that agent id is
/// live and owned by that user, and without an answer the agent is told to retry (503), never that it is refused.
/// </summary>
internal sealed partial class RbsTokenAuthorizationHandler(AgentDirectoryClient directory, ILogger<RbsTokenAuthorizationHandler> logger)
    : AuthorizationHandler<RbsTokenRequirement>
{
    protected override async Task HandleRequirementAsync(AuthorizationHandlerContext context, RbsTokenRequirement requirement)
    {
        if (context.Resource is not HttpContext http)
        {
            context.Fail();
            return;
        }

        var feature = RbsTokenFeature.Of(http);
        var route = http.Request.Headers[RbsHeaders.AgentRoute].ToString();
        if (requirement.Kind == RbsTokenKind.Session && string.IsNullOrEmpty(route))
        {
            Refuse(context, feature, RefusalKind.MissingRoute, $"missing '{RbsHeaders.AgentRoute}' metadata");
            return;
        }

        var identity = context.User.Identities.FirstOrDefault(i => i.IsAuthenticated);
        if (identity is null)
        {
            if (requirement.Kind == RbsTokenKind.Join && feature.ExpiredJoin is { } expired)
            {
                await ConfirmExpiredJoinAsync(context, requirement, http, feature, expired);
                return;
            }

            Refuse(context, feature, RefusalKind.Unauthenticated, feature.Failure ?? "no token was presented");
            return;
        }

        var kind = RbsTokenService.KindOf(identity);
        if (kind != requirement.Kind || RbsTokenService.ClaimsOf(identity, requirement.Kind) is not { } claims)
        {
            Refuse(context, feature, RefusalKind.Unauthenticated, kind is { } presented
                ? RbsTokenService.WrongKind(presented, requirement.Kind)
                : "the token is malformed (no agent or user claim)");
            return;
        }

        if (requirement.Kind == RbsTokenKind.Session && !RbsTokenService.FixedTimeEquals(claims.AgentId, route))
        {
            Refuse(context, feature, RefusalKind.Forbidden, claims.UserId);
            return;
        }

        feature.Admitted = claims;
        context.Succeed(requirement);
    }

    /// <summary>
    /// The refusal is kept on the request too: for an unauthenticated request the authorization result is a bare
    /// challenge, without the failure reasons.
    /// </summary>
    private void Refuse(AuthorizationHandlerContext context, RbsTokenFeature feature, RefusalKind kind, string message)
    {
        var refusal = new RbsTokenRefusal(this, kind, message);
        feature.Refusal = refusal;
        context.Fail(refusal);
    }

    private async Task ConfirmExpiredJoinAsync(AuthorizationHandlerContext context, RbsTokenRequirement requirement, HttpContext http, RbsTokenFeature feature, RbsTokenClaims expired)
    {
        var confirmation = await directory.ConfirmAsync(expired.AgentId, expired.UserId, http.RequestAborted);
        switch (confirmation.Outcome)
        {
            case AgentConfirmation.Live:
                Log.ExpiredTokenReadmitted(logger, expired.AgentId, expired.ExpiresAt);
                feature.Admitted = expired;
                context.Succeed(requirement);
                return;
            case AgentConfirmation.NotLive:
                Refuse(context, feature, RefusalKind.Unauthenticated,
                    $"{feature.Failure}, and the orchestrator does not confirm agent {expired.AgentId} as live: {confirmation.Reason}");
                return;
            default:
                Log.ExpiredTokenUnconfirmed(logger, expired.AgentId, confirmation.Reason);
                Refuse(context, feature, RefusalKind.Retry,
                    $"join token of agent {expired.AgentId} expired and {confirmation.Reason}; retry");
                return;
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 122, Level = LogLevel.Information, Message = "Agent {AgentId} re-registers with a join token that expired at {ExpiredAt:O}; the orchestrator confirmed it is live, so it gets a fresh one")]
        public static partial void ExpiredTokenReadmitted(ILogger logger, string agentId, DateTimeOffset expiredAt);

        [LoggerMessage(EventId = 123, Level = LogLevel.Warning, Message = "Agent {AgentId} re-registers with an expired join token and the orchestrator could not confirm it ({Reason}); told to retry")]
        public static partial void ExpiredTokenUnconfirmed(ILogger logger, string agentId, string reason);
    }
}

/// <summary>
/// Answers a refused request as its caller understands it: an agent gets a plain 4xx it treats as final (or 503 with
/// Retry-After), the orchestrator and a gRPC client a status that says what to do.
/// </summary>
internal sealed partial class RefusalWriter(ILogger<RefusalWriter> logger) : IAuthorizationMiddlewareResultHandler
{
    private readonly AuthorizationMiddlewareResultHandler _default = new();

    public async Task HandleAsync(RequestDelegate next, HttpContext context, AuthorizationPolicy policy, PolicyAuthorizationResult authorizeResult)
    {
        var requirement = policy.Requirements.OfType<RbsTokenRequirement>().FirstOrDefault();
        if (authorizeResult.Succeeded || requirement is null)
        {
            await _default.HandleAsync(next, context, policy, authorizeResult);
            return;
        }

        var refusal = RbsTokenFeature.Of(context).Refusal
            ?? authorizeResult.AuthorizationFailure?.FailureReasons.OfType<RbsTokenRefusal>().FirstOrDefault();
        var kind = refusal?.Kind ?? RefusalKind.Unauthenticated;
        var reason = refusal?.Message ?? RbsTokenFeature.Of(context).Failure ?? "no token was presented";
        var remote = context.Connection.RemoteIpAddress?.ToString() ?? "?";
        switch (requirement.Kind)
        {
            case RbsTokenKind.Session:
                await RefuseStreamAsync(context, kind, reason);
                return;
            case RbsTokenKind.Join when kind == RefusalKind.Retry:
                context.Response.Headers.RetryAfter = "5";
                await WriteAsync(context, StatusCodes.Status503ServiceUnavailable, reason);
                return;
            case RbsTokenKind.Join:
                Log.TunnelRejected(logger, remote, reason);
                await WriteAsync(context, StatusCodes.Status401Unauthorized, $"join token rejected: {reason}");
                return;
            default:
                // rbs.v1.GatewayRegistry: a gRPC(-Web) status the orchestrator can show as it is.
                await GrpcResponses.WriteStatusAsync(context, StatusCode.Unauthenticated,
                    $"internal token rejected: {reason}; the orchestrator and the gateway must share the same token key");
                return;
        }
    }

    private async Task RefuseStreamAsync(HttpContext context, RefusalKind kind, string reason)
    {
        // Client input: quoted in messages only through UntrustedText.Echo (a long header would not fit the reply's).
        var shown = UntrustedText.Echo(context.Request.Headers[RbsHeaders.AgentRoute].ToString());
        switch (kind)
        {
            case RefusalKind.MissingRoute:
                await GrpcResponses.WriteStatusAsync(context, StatusCode.InvalidArgument,
                    $"missing '{RbsHeaders.AgentRoute}' metadata: ask the orchestrator (GetServer, connect mode tunnel) for the agent route");
                return;
            case RefusalKind.Forbidden:
                Log.StreamForbidden(logger, shown, reason);
                await GrpcResponses.WriteStatusAsync(context, StatusCode.PermissionDenied,
                    $"the session token does not grant access to agent {shown}");
                return;
            default:
                Log.StreamRejected(logger, shown, reason);
                await GrpcResponses.WriteStatusAsync(context, StatusCode.Unauthenticated,
                    $"session token rejected for agent {shown}: {reason}; call GetServer again for a fresh token");
                return;
        }
    }

    private static async Task WriteAsync(HttpContext context, int status, string message)
    {
        context.Response.StatusCode = status;
        if (status == StatusCodes.Status401Unauthorized)
        {
            context.Response.Headers.WWWAuthenticate = "Bearer error=\"invalid_token\"";
        }

        await context.Response.WriteAsync(message + "\n", context.RequestAborted);
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 120, Level = LogLevel.Warning, Message = "Tunnel from {Remote} rejected: {Reason}")]
        public static partial void TunnelRejected(ILogger logger, string remote, string reason);

        [LoggerMessage(EventId = 130, Level = LogLevel.Information, Message = "Stream to agent {AgentId} rejected: {Reason}")]
        public static partial void StreamRejected(ILogger logger, string agentId, string reason);

        [LoggerMessage(EventId = 134, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} denied for user {UserId}: token is for another agent")]
        public static partial void StreamForbidden(ILogger logger, string agentId, string userId);
    }
}
