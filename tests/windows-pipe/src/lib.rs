//! Compiles hearth's named-pipe listener for Windows and tests it (under Wine on Linux CI): a real
//! pipe, real hyper HTTP/1 on both ends, the same listener code the daemon uses on Windows.

#[path = "../../../src/server/pipe.rs"]
pub mod pipe;

#[path = "../../../src/sys/pipe_name.rs"]
pub mod pipe_name;

/// What `pipe.rs` uses of the daemon's platform layer (`crate::sys`): the naming rules.
pub mod sys {
    pub use super::pipe_name;
}

#[cfg(all(test, windows))]
#[allow(unsafe_code)] // reading the pipe's security descriptor back
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::net::windows::named_pipe::ClientOptions;

    use super::pipe::{default_pipe_name, PipeListener};

    fn unique_name(tag: &str) -> String {
        let dir = std::env::temp_dir().join(format!(
            "{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        default_pipe_name("test", &dir)
    }

    /// Serves HTTP/1 on every accepted instance, as `server::serve` does with the daemon's routes.
    fn serve(mut listener: PipeListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok(conn) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "{{\"path\":\"{path}\",\"bytes\":{}}}",
                                body.len()
                            )))))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .await;
                });
            }
        })
    }

    async fn open(name: &str) -> tokio::net::windows::named_pipe::NamedPipeClient {
        // ERROR_PIPE_BUSY: every instance taken for a moment; the documented answer is to retry.
        for _ in 0..200 {
            match ClientOptions::new().open(name) {
                Ok(client) => return client,
                Err(err) if err.raw_os_error() == Some(231) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(err) => panic!("open {name}: {err}"),
            }
        }
        panic!("{name}: still busy after 2 s");
    }

    async fn get(name: &str, path: &str, body: Vec<u8>) -> (u16, String) {
        let client = open(name).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::post(path)
            .header("host", "hearth")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_over_the_pipe_sequential_and_concurrent_clients() {
        let name = unique_name("http");
        let server = serve(PipeListener::bind(&name).unwrap());
        let (status, body) = get(&name, "/api/v1/health", Vec::new()).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"path":"/api/v1/health","bytes":0}"#)
        );
        // A body larger than the pipe buffer crosses intact.
        let (_, body) = get(&name, "/big", vec![b'x'; 300 * 1024]).await;
        assert_eq!(body, r#"{"path":"/big","bytes":307200}"#);
        // 32 clients at once: each finds an instance (the next one is created before the
        // connected one is handed out) or retries a busy pipe, and each gets its own answer.
        let mut clients = Vec::new();
        for i in 0..32 {
            let name = name.clone();
            clients.push(tokio::spawn(async move {
                get(&name, &format!("/c/{i}"), vec![0; i]).await
            }));
        }
        for (i, client) in clients.into_iter().enumerate() {
            let (status, body) = client.await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, format!(r#"{{"path":"/c/{i}","bytes":{i}}}"#));
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_second_listener_on_the_same_name_is_refused() {
        let name = unique_name("twice");
        let first = PipeListener::bind(&name).unwrap();
        let err = PipeListener::bind(&name)
            .err()
            .expect("second bind must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("already in use"), "{err}");
        drop(first);
        // Once the owner is gone the name is free again (a restart after a crash needs no
        // clean-up: pipes vanish with their last handle).
        PipeListener::bind(&name).unwrap();
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_any_system_call() {
        let err = PipeListener::bind("/tmp/hearth.sock").err().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn accept_is_cancel_safe() {
        let name = unique_name("cancel");
        let mut listener = PipeListener::bind(&name).unwrap();
        // An accept dropped by a timeout (as `select!` does on shutdown or on another branch)...
        assert!(
            tokio::time::timeout(Duration::from_millis(50), listener.accept())
                .await
                .is_err()
        );
        // ...loses nothing: the next accept serves a client that arrives afterwards.
        let opener = tokio::spawn({
            let name = name.clone();
            async move { open(&name).await }
        });
        let conn = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("accept after a cancelled accept")
            .unwrap();
        drop(conn);
        opener.await.unwrap();
    }

    #[tokio::test]
    async fn the_pipe_has_an_owner_only_protected_dacl() {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Foundation::LocalFree;
        use windows_sys::Win32::Security::Authorization::{
            ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
            SE_KERNEL_OBJECT,
        };
        use windows_sys::Win32::Security::{DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR};

        let name = unique_name("dacl");
        let mut listener = PipeListener::bind(&name).unwrap();
        let expected = listener.sddl().to_owned();
        assert!(
            expected.starts_with("D:P(D;;GA;;;NU)(A;;GA;;;S-1-"),
            "{expected}"
        );
        // Read back what the kernel object actually has, on the first instance and on one
        // created by `accept` (every instance must carry it).
        let mut instances = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let opener = tokio::spawn({
                let name = name.clone();
                async move { open(&name).await }
            });
            instances.push(listener.accept().await.unwrap());
            clients.push(opener.await.unwrap());
        }
        for handle in instances.iter().map(|i| i.as_raw_handle()) {
            let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
            let status = unsafe {
                GetSecurityInfo(
                    handle as _,
                    SE_KERNEL_OBJECT,
                    DACL_SECURITY_INFORMATION,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    &mut descriptor,
                )
            };
            assert_eq!(status, 0, "GetSecurityInfo");
            let mut text: *mut u16 = std::ptr::null_mut();
            let ok = unsafe {
                ConvertSecurityDescriptorToStringSecurityDescriptorW(
                    descriptor,
                    SDDL_REVISION_1,
                    DACL_SECURITY_INFORMATION,
                    &mut text,
                    std::ptr::null_mut(),
                )
            };
            assert_ne!(ok, 0);
            let actual = unsafe {
                let len = (0..).take_while(|&i| *text.add(i) != 0).count();
                let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
                LocalFree(text as _);
                LocalFree(descriptor as _);
                s
            };
            // Exactly the two entries: nobody but the owner is allowed, the network is denied.
            let sid = expected.rsplit(";;;").next().unwrap().trim_end_matches(')');
            assert!(actual.starts_with("D:P"), "not protected: {actual}");
            assert!(
                actual.contains(&format!(";;;{sid})")),
                "owner entry missing: {actual}"
            );
            assert!(actual.contains(";;;NU)"), "network deny missing: {actual}");
            assert_eq!(actual.matches('(').count(), 2, "extra entries: {actual}");
        }
    }
}
