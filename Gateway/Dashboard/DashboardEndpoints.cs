using System.Reflection;
using System.Text.Json.Serialization;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// The dashboard on the gateway's public endpoint (docs/dashboard.md): the page (<c>/dashboard/</c>, and
/// <c>/dashboard/invocations/ID</c>, the link jbazel prints), its script and style (embedded resources), the sign-in
/// (<c>POST /dashboard/signin</c>: an API key in, a session token out) and the SignalR hub (<c>/dashboard/hub</c>).
/// </summary>
internal static partial class DashboardEndpoints
{
    public const string Prefix = "/dashboard";
    public const string HubPath = Prefix + "/hub";

    /// <summary>The session cookie sign-in sets (HttpOnly, SameSite=Strict, path /dashboard).</summary>
    public const string SessionCookie = "rbs-dashboard-session";

    /// <summary>At most this many hub connections at once (each may hold one feed of bounded memory).</summary>
    public const int MaxConnections = 256;

    private static readonly Assembly s_assembly = typeof(DashboardEndpoints).Assembly;

    public static IServiceCollection AddDashboard(this IServiceCollection services)
    {
        services.AddSingleton<DashboardSessions>();
        services.AddSingleton<DashboardHttp1Fallback>();
        // Cleartext public endpoint: browsers reach the dashboard through the HTTP/1.1 relay (DashboardHttp1Fallback).
        services.AddOptions<KestrelServerOptions>().Configure<IOptions<GatewayOptions>, DashboardHttp1Fallback>((kestrel, options, fallback) =>
        {
            if (string.IsNullOrEmpty(options.Value.CertificatePath))
            {
                fallback.Listen(kestrel);
            }
        });
        services.AddSingleton<DashboardDirectoryClient>();
        services.AddSignalR(o =>
            {
                o.MaximumReceiveMessageSize = 16 * 1024;
                o.MaximumParallelInvocationsPerClient = 1;
            })
            .AddJsonProtocol(o => o.PayloadSerializerOptions.DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull);
        return services;
    }

    public static WebApplication MapDashboard(this WebApplication app)
    {
        var connections = new SemaphoreSlim(MaxConnections, MaxConnections);
        // Admission to the hub (negotiate, then the WebSocket): a live session, named by the session cookie (HttpOnly,
        // SameSite=Strict: the page's script never holds it, and it is in no URL or request log), from this origin
        // only (a WebSocket is not bound by CORS); the session's user is all the hub trusts.
        app.Use(async (context, next) =>
        {
            if (!context.Request.Path.StartsWithSegments(HubPath))
            {
                if (context.Request.Path.Value == Prefix)
                {
                    // Routing matches /dashboard and /dashboard/ alike; the page's relative links want the slash.
                    context.Response.Redirect(Prefix + "/");
                    return;
                }

                await next(context);
                return;
            }

            var sessions = context.RequestServices.GetRequiredService<DashboardSessions>();
            if (!SameOrigin(context.Request))
            {
                context.Response.StatusCode = StatusCodes.Status403Forbidden;
                await context.Response.WriteAsync("the dashboard's hub answers only its own pages");
                return;
            }

            if (sessions.Find(context.Request.Cookies[SessionCookie]) is not { } user)
            {
                context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                await context.Response.WriteAsync("sign in again: the dashboard session is missing or expired");
                return;
            }

            if (!connections.Wait(0))
            {
                context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                await context.Response.WriteAsync($"the gateway serves its maximum of {MaxConnections} dashboard connections; try again later");
                return;
            }

            try
            {
                context.Items[DashboardHub.UserItem] = user;
                await next(context);
            }
            finally
            {
                connections.Release();
            }
        });

        app.MapGet(Prefix + "/", () => Asset("index.html", "text/html; charset=utf-8"));
        app.MapGet(Prefix + "/invocations/{id}", (string id) => Asset("index.html", "text/html; charset=utf-8"));
        app.MapGet(Prefix + "/dashboard.js", () => Asset("dashboard.js", "text/javascript; charset=utf-8"));
        app.MapGet(Prefix + "/dashboard.css", () => Asset("dashboard.css", "text/css; charset=utf-8"));
        app.MapPost(Prefix + "/signin", SignInAsync);
        app.MapPost(Prefix + "/signout", (HttpContext context, DashboardSessions sessions) =>
        {
            if (!SameOrigin(context.Request))
            {
                return Results.StatusCode(StatusCodes.Status403Forbidden);
            }

            sessions.End(context.Request.Cookies[SessionCookie]);
            context.Response.Cookies.Delete(SessionCookie, new CookieOptions { Path = Prefix });
            return Results.NoContent();
        });
        app.MapHub<DashboardHub>(HubPath, o =>
        {
            o.Transports = HttpTransportType.WebSockets;
            // Bounded per connection: a page that reads slowly makes the hub wait, and the feed drops (DashboardFeed).
            o.TransportMaxBufferSize = 64 * 1024;
            o.ApplicationMaxBufferSize = 16 * 1024;
        });
        return app;
    }

    private static IResult Asset(string name, string contentType)
    {
        using var stream = s_assembly.GetManifestResourceStream("Rbs.Gateway.Dashboard." + name)
            ?? throw new InvalidOperationException($"the dashboard asset {name} is not embedded in the gateway");
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return new AssetResult(memory.ToArray(), contentType);
    }

    /// <summary>No Origin (not a browser's cross-site request) or this very origin.</summary>
    private static bool SameOrigin(HttpRequest request)
    {
        var origin = request.Headers.Origin.ToString();
        return origin.Length == 0 || string.Equals(origin, $"{request.Scheme}://{request.Host}", StringComparison.OrdinalIgnoreCase);
    }

    private static async Task<IResult> SignInAsync(HttpContext context, SignInRequest? request, DashboardDirectoryClient directory, DashboardSessions sessions, ILoggerFactory loggers, CancellationToken cancellationToken)
    {
        if (!SameOrigin(context.Request))
        {
            return Results.Json(new SignInReply(null, "sign in on the dashboard's own page"), statusCode: StatusCodes.Status403Forbidden);
        }

        try
        {
            var answer = await directory.SignInAsync(request?.ApiKey ?? "", cancellationToken);
            if (!answer.Accepted)
            {
                return Results.Json(new SignInReply(null, answer.Reason), statusCode: StatusCodes.Status401Unauthorized);
            }

            context.Response.Cookies.Append(SessionCookie, sessions.Create(answer.UserId), new CookieOptions
            {
                HttpOnly = true,
                SameSite = SameSiteMode.Strict,
                Secure = context.Request.IsHttps,
                Path = Prefix,
                MaxAge = DashboardSessions.Lifetime,
            });
            return Results.Json(new SignInReply(answer.UserId, null));
        }
        catch (RpcException e)
        {
            Log.SignInUnanswered(loggers.CreateLogger("Rbs.Gateway.Dashboard"), e.StatusCode, e.Status.Detail);
            return Results.Json(new SignInReply(null, $"the orchestrator at {directory.Address} could not check the key ({e.StatusCode}); try again"),
                statusCode: StatusCodes.Status503ServiceUnavailable);
        }
    }

    internal sealed record SignInRequest(string? ApiKey);

    internal sealed record SignInReply(string? User, string? Message);

    /// <summary>An embedded asset, with a policy that lets the page load only itself and talk only to this gateway.</summary>
    private sealed class AssetResult(byte[] content, string contentType) : IResult
    {
        public Task ExecuteAsync(HttpContext context)
        {
            var headers = context.Response.Headers;
            headers.ContentSecurityPolicy = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";
            headers.XContentTypeOptions = "nosniff";
            headers.CacheControl = "no-cache";
            context.Response.ContentType = contentType;
            context.Response.ContentLength = content.Length;
            return context.Response.Body.WriteAsync(content).AsTask();
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 175, Level = LogLevel.Warning, Message = "Dashboard sign-in: the orchestrator did not answer ({Status}: {Detail})")]
        public static partial void SignInUnanswered(ILogger logger, StatusCode status, string detail);
    }
}
